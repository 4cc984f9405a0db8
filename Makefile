# The two commands a newcomer needs: `make demo` and `make test`. Both set everything up first.
.PHONY: install demo test lint kafka-up kafka-down bench calibrate clean

install:
	scripts/install.sh

demo: install
	.venv/bin/python -m devtools.demo

test: install
	scripts/test.sh

lint: install
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/mypy

kafka-up: install
	.venv/bin/facestream kafka up

kafka-down:
	scripts/kafka.sh down

bench: install
	.venv/bin/python bench/pipeline.py

calibrate: install
	.venv/bin/python bench/calibrate.py

clean:
	scripts/kafka.sh down || true
	rm -rf .venv .facestream
