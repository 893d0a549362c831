# Two entry points on a fresh machine:  `make demo` (the main job on the built-in data)
# and `make test` (the test suite). Both create .venv when it is missing.
# `make peers` builds a second environment, .venv-peers, for side-by-side work against torchvision,
# timm, segmentation_models_pytorch and transformers, and for nnU-Net (the review's anchor, `segbench run
# --anchor nnunet`); .venv stays CPU-only torch without them.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
# The two torch pins, kept together: .venv's CPU build, and .venv-peers' torch/torchvision pair
# (torchvision only works with the torch it was built against, so they move as one).
TORCH      ?= torch==2.13.0
PEER_TORCH ?= torch==2.14.1 torchvision==0.29.1
PEERS_VENV := .venv-peers
PEERS_BIN  := $(PEERS_VENV)/bin
# e.g. --system-site-packages, to use a torch/torchvision pair installed outside the venv
PEERS_VENV_ARGS ?=

.PHONY: install demo test docs peers wheelhouse clean

$(BIN)/segbench: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# Pin torch first: an unpinned requirement would pull a multi-GB CUDA build.
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(BIN)/segbench

install: $(BIN)/segbench

# A pair already in the environment that works together (its C++ ops load) is kept, whatever its
# versions: another machine's CUDA build, or one from PEERS_VENV_ARGS=--system-site-packages.
PAIR_WORKS := import torch, torchvision; torchvision.ops.nms(torch.zeros(0, 4), torch.zeros(0), 0.5)

$(PEERS_BIN)/segbench: pyproject.toml
	test -x $(PEERS_BIN)/python || $(PY) -m venv $(PEERS_VENV_ARGS) $(PEERS_VENV)
	$(PEERS_BIN)/python -m pip install -q --upgrade pip
	$(PEERS_BIN)/python -c "$(PAIR_WORKS)" 2>/dev/null || $(PEERS_BIN)/python -m pip install -q $(PEER_TORCH)
	$(PEERS_BIN)/python -m pip install -q -e ".[peers,dev]"
	$(PEERS_BIN)/python -c "$(PAIR_WORKS)"
	touch $(PEERS_BIN)/segbench

peers: $(PEERS_BIN)/segbench

# Wheels for an offline GPU machine's own Python (scripts/gpu_check.sh WHEELHOUSE=wheelhouse): by default what a
# PyTorch image tends to lack (nibabel, nilearn, onnx and onnx's newer requirements; 24 MB for 3.12). The
# script's check prints the WHEELHOUSE_PACKAGES line for what a given machine lacks. Any pip downloads them.
PY_VERSION          ?= 3.12
PLATFORM            ?= manylinux_2_28_x86_64
WHEELHOUSE          ?= wheelhouse
WHEELHOUSE_PACKAGES ?= nibabel nilearn onnx ml_dtypes protobuf
DOWNLOAD_PY         ?= $(if $(wildcard $(BIN)/python),$(BIN)/python,$(PY))

wheelhouse:
	$(DOWNLOAD_PY) scripts/offline_deps.py download --dest $(WHEELHOUSE) --python-version $(PY_VERSION) \
		--platform $(PLATFORM) $(WHEELHOUSE_PACKAGES)

demo: install
	$(BIN)/segbench run

test: install
	$(BIN)/python -m pytest -q

# The documentation site (mkdocs.yml, docs/) into site/; --strict: a broken link, a missing page or an API
# page naming a function that no longer exists fails the build.
docs: install
	$(BIN)/python -c "import material, mkdocstrings_handlers.python" 2>/dev/null || $(BIN)/python -m pip install -q -e ".[docs]"
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

clean:
	rm -rf $(VENV) $(PEERS_VENV) runs .pytest_cache wheelhouse .venv-gpu site
