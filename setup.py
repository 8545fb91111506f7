"""hat-rknn: ``pip install -e .[dev]`` (README "Install" gives the whole order).

Two packages are installed apart, after the rest and with ``--no-deps`` (:data:`INSTALLED_APART`; ``tools/install.sh``
does it): fairseq-fixed declares torchaudio, which nothing here imports, and rknn-toolkit2 2.5.0 declares
``torch<=2.4.0``, which pip cannot resolve beside torch 2.13, though it works beside it. Their other dependencies are
declared here instead, so that ``--no-deps`` leaves nothing missing. The version ranges hold the pins
of requirements.txt (what CI installs and tests; tests/test_packaging.py checks that they agree).
"""
from setuptools import find_packages, setup

PYTHON_REQUIRES = ">=3.11,<3.12"  # the only Python the suite runs on (tools/install.sh: python3.11)

INSTALL_REQUIRES = [
    "torch>=2.13,<2.14",
    "numpy>=1.24,<2",  # rknn-toolkit2 2.5.0: numpy<=1.26.4
    "pyyaml>=6",
    "tqdm>=4.64.1",
    "onnx>=1.16.1,<=1.18.0",  # rknn-toolkit2 2.5.0's range
    "protobuf>=4.25.1,<=4.25.4",  # onnx 1.18 needs >=4.25.1, rknn-toolkit2 2.5.0 <=4.25.4
    "onnxruntime>=1.17",
    "sacrebleu>=2",
    "sentencepiece",
    "scikit-learn",  # latency_predictor.py's baselines
    "matplotlib",
    "sacremoses",  # the paper tasks: Moses detokenization for sacreBLEU, as HAT's test.sh (hat/evaluate.py)
    "subword-nmt",  # the paper tasks: their BPE codes (hat/evaluate.py, configs/*/preprocess.sh)
    # fairseq-fixed 0.12.3.1: what it needs to build (--no-build-isolation) and to run, as it declares them
    "cython",
    "setuptools<81",
    "cffi",
    "hydra-core==1.3.2",
    "omegaconf==2.3.0",
    "regex",
    "bitarray",
    "packaging",
]

EXTRAS_REQUIRE = {
    # the test suite
    "dev": ["pytest>=7"],
    # rknn-toolkit2 2.5.0's dependencies except torch (install the toolkit itself with --no-deps, see INSTALLED_APART)
    "npu": [
        "psutil>=5.9.0",
        "ruamel.yaml>=0.17.21",
        "scipy>=1.9.3",
        "opencv-python>=4.5.5.64,<=4.11.0.86",  # later releases need numpy 2
        "fast-histogram>=0.11",
    ],
    # files on Google Drive: HAT's checkpoints (download_model.py), WMT'14 En-De's corpus (its preprocess.sh)
    "gdrive": ["gdown"],
}

# Imported by hat/ but installed apart (README "Install"): import name -> distribution, exact version tested.
INSTALLED_APART = {
    "fairseq": "fairseq-fixed==0.12.3.1",  # pip install --no-deps --no-build-isolation, after the rest
    "fairseq_cli": "fairseq-fixed==0.12.3.1",
    "rknn": "rknn-toolkit2==2.5.0",  # pip install --no-deps (x86_64 / aarch64 host, Python 3.8-3.12 wheels)
    "rknnlite": "rknn-toolkit-lite2==2.5.0",  # on the board only (aarch64, Python 3.7-3.12 wheels)
}

setup(
    name="hat-rknn",
    version="0.1.0",
    description="Hardware-Aware Transformers for edge accelerators (RK3588 NPU, CPU, GPU)",
    packages=find_packages(include=["hat", "hat.*"]),
    # the data files that hat/ reads beside its modules (hat/model_registry.json, ...)
    package_data={"": ["*.json", "*.yml", "*.yaml"]},
    python_requires=PYTHON_REQUIRES,
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
    classifiers=[
        "Programming Language :: Python :: 3.11",
        "Operating System :: POSIX :: Linux",
    ],
)
