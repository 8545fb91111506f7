# Two commands a user needs: `make demo` (the main job on the embedded demo task) and `make test`.
# Both install what is missing first, into .venv (pins in requirements.txt, see tools/install.sh).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.hat-installed

.PHONY: install data demo test test-fast bench clean-demo

install: $(STAMP)

$(STAMP): requirements.txt setup.py tools/install.sh
	bash tools/install.sh
	touch $(STAMP)

data: install
	$(PY) -m hat.data.prepare --pair de-en --dest data-bin/demo.de-en --vocab-size 8000

demo: install
	$(PY) -m hat.demo

test: install
	$(PY) -m pytest -q -rs tests

test-fast: install
	$(PY) -m pytest -q -rs -m "not slow" tests

bench: install
	$(PY) benchmarks/supernet_throughput.py

clean-demo:
	rm -rf checkpoints/demo.de-en results/demo.de-en
