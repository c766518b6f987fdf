# Front door to the CMake build. Every target is a thin wrapper; see README.md.
#
#   make deps    install the Debian packages the build needs (only those missing)
#   make         configure and build everything into $(BUILD)/
#   make test    build, then run every test through CTest
#   make demo    the main job: fortunes corpus -> train a small Sessa LM -> sample
#   make format  clang-format every C++/CUDA source in place
#   make clean   remove $(BUILD)/
BUILD ?= build
JOBS  ?= $(shell nproc)
CMAKE_FLAGS ?=

DEB_PACKAGES := build-essential cmake clang-format doctest-dev libcli11-dev nlohmann-json3-dev libopenmpi-dev openmpi-bin fortunes
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: all build configure test deps demo format clean

all: build

configure:
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=Release $(CMAKE_FLAGS)

build: configure
	cmake --build $(BUILD) -j $(JOBS)

test: build
	ctest --test-dir $(BUILD) --output-on-failure

deps:
	@missing=$$(for p in $(DEB_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing:" $$missing; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	else echo "all build dependencies present"; fi

demo: deps build
	bash apps/demo.sh $(BUILD)

format:
	git ls-files -co --exclude-standard '*.cpp' '*.h' '*.cu' '*.cuh' | xargs clang-format -i

clean:
	rm -rf $(BUILD)
