# Arkēs — `make run` installs the default system to a disk image and boots it; `make test` runs every test layer.
DISK ?= build/arkes.img
OS := .venv/bin/os

.PHONY: setup images run test lint bench bench-vm clean

setup:
	@scripts/setup

images: setup
	$(OS) images

run: images
	$(OS) install --disk $(DISK) --wipe --no-root-password
	$(OS) vm $(DISK)

test: images
	scripts/test

lint: setup
	.venv/bin/ruff check arkes tests bench
	.venv/bin/ruff format --check arkes tests bench
	.venv/bin/mypy

bench: images
	.venv/bin/python bench/upgrade.py
	.venv/bin/python bench/fleet.py

bench-vm: images
	.venv/bin/python bench/vm.py

clean:
	rm -rf build
