# The two commands of the README, plus conveniences. Each target sets up what it needs.
.PHONY: run test bench cmake setup clean

run:    ## install everything and run the main job
	bash scripts/run.sh

test:   ## install everything and run the tests (Python, doctests, libtorch build)
	bash scripts/test.sh

setup:  ## only install / rebuild
	bash scripts/setup.sh

bench:  ## pytest-benchmark runs of every op (see bench/RESULTS.md)
	bash scripts/setup.sh && . $${VMD_FAST_VENV:-.venv}/bin/activate && python -m pytest bench -q

cmake:  ## the libtorch shared library and its C++ smoke test
	bash scripts/setup.sh && bash scripts/cmake_build.sh

clean:
	rm -rf build build-cmake build-cmake.configure.log vmd_fast/_C*.so
