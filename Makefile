# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
EXTRAS := torch,postgres,plots,examples,pb2,lightning,transformers,tensorboard,mlflow,dashboard,test

.PHONY: demo test bench bench-peers chaos clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[$(EXTRAS)]'
	touch $@

demo: $(STAMP)
	$(BIN)/popbt demo

test: $(STAMP)
	$(BIN)/ruff check src tests bench chaos
	$(BIN)/ruff format --check src tests bench chaos
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python bench/run_all.py

# Ray Tune, for bench/peers.py, lives in its own environment and never in .venv.
PEERS       := .venv-peers
PEERS_STAMP := $(PEERS)/.installed

$(PEERS_STAMP): pyproject.toml constraints.txt
	test -x $(PEERS)/bin/python || $(PYTHON) -m venv $(PEERS)
	$(PEERS)/bin/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e . \
		'ray[tune]' torch==2.13.0 numpy scikit-learn
	touch $@

bench-peers: $(STAMP) $(PEERS_STAMP)
	$(BIN)/python bench/peers.py

chaos: $(STAMP)
	$(BIN)/python chaos/campaign.py

clean:
	rm -rf $(VENV) popbt-runs src/*.egg-info
