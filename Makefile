# The README's two commands: `make demo` (main job) and `make test`. Each creates .venv when needed.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test lint clean isbi

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/seglab demo

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .  # the formatter is authoritative (Markdown code blocks included): a drift fails
	$(BIN)/python -m pytest -n 2 -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The ISBI 2012 recipe (configs/isbi2012-unet.yaml): two U-Nets, with and without augmentation, their ensemble
# evaluated on the test slices 25-29, predictions and the README figure. Starts over (--overwrite).
ISBI := ../shared/data/isbi2012-membrane
ISBI_TEST := $(foreach s,25 26 27 28 29,$(ISBI)/images/$(s).png)
isbi: $(STAMP)
	$(BIN)/seglab train configs/isbi2012-unet.yaml --no-progress --overwrite
	$(BIN)/seglab train configs/isbi2012-unet.yaml --out runs/isbi2012-unet-plain --no-progress --overwrite \
		--set data.elastic=0 --set data.hflip=false --set data.vflip=false
	$(BIN)/seglab evaluate runs/isbi2012-unet --ensemble runs/isbi2012-unet-plain --data $(ISBI) --split test \
		--rand-class cell --instances learned --instance-param seed_threshold=0.97 --instance-param fill=true \
		--no-progress
	$(BIN)/seglab predict runs/isbi2012-unet $(ISBI_TEST) --ensemble runs/isbi2012-unet-plain \
		--out runs/isbi2012-unet/test-pred --prob membrane --no-progress
	$(BIN)/python scripts/isbi_figure.py runs/isbi2012-unet runs/isbi2012-unet-plain

clean:
	rm -rf runs .pytest_cache .ruff_cache
