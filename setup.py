from setuptools import find_packages, setup

setup(
    name="hat-rknn",
    version="0.1.0",
    description="Hardware-Aware Transformers for edge accelerators (RK3588 NPU, CPU, GPU)",
    packages=find_packages(include=["hat", "hat.*"]),
    python_requires=">=3.9",
    install_requires=["torch", "numpy", "pyyaml", "tqdm"],
)
