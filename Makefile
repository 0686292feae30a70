# gs2pose_ros: the two commands of the quick start, and a few more.
#   make demo   end-to-end run on the built-in default object (sets up .venv first)
#   make test   the whole test suite (sets up .venv first)
# Every process that starts DDS keeps discovery on this machine, with its own domain.

VENV      := .venv
PY        := $(VENV)/bin/python
DEMO_OUT  ?= demo_output
PYTEST_ARGS ?=

export ROS_AUTOMATIC_DISCOVERY_RANGE := LOCALHOST
export ROS_DOMAIN_ID ?= 42
# libgomp's default busy-wait makes multi-threaded torch crawl when the cores are shared with
# other processes (the ROS tests run a node beside the test process): wait passively.
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: setup demo test test-fast bench clean

setup:
	@bash scripts/setup_venv.sh

demo: setup
	$(VENV)/bin/gs2pose demo --out $(DEMO_OUT)

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

# Unit tests only: no ROS processes, nothing marked slow.
test-fast: setup
	$(PY) -m pytest -m "not slow and not ros" $(PYTEST_ARGS)

bench: setup
	$(PY) bench/bench_render.py

clean:
	rm -rf $(VENV) build *.egg-info $(DEMO_OUT)
