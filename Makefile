# Arkēs — `make run` builds the default system and shows it; `make test` runs every test layer.
SYSROOT ?= build/sysroot
OS := .venv/bin/os

.PHONY: setup images run test lint bench clean

setup:
	@scripts/setup

images: setup
	$(OS) images

run: images
	rm -rf $(SYSROOT)
	$(OS) --sysroot $(SYSROOT) install
	$(OS) --sysroot $(SYSROOT) status

test: images
	scripts/test

lint: setup
	.venv/bin/ruff check arkes tests bench
	.venv/bin/ruff format --check arkes tests bench
	.venv/bin/mypy

bench: images
	.venv/bin/python bench/upgrade.py

clean:
	rm -rf build
