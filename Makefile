# Front door to the CMake build. Every target is a thin wrapper; see README.md.
#
#   make deps    install the Debian packages the build needs (only those missing)
#   make         configure and build everything into $(BUILD)/
#   make test    build, then run every test through CTest
#   make test-sanitize  the CPU suite under AddressSanitizer + UBSan (clang, $(SANITIZE_BUILD)/)
#   make fuzz    build the libFuzzer targets there and run each for FUZZ_SECONDS
#   make demo    the main job: fortunes corpus -> train a small Sessa LM -> sample
#   make format  clang-format every C++/CUDA source in place
#   make clean   remove $(BUILD)/
BUILD ?= build
JOBS  ?= $(shell nproc)
CMAKE_FLAGS ?=
# Sanitizer build (CPU only): the test suite and the fuzz targets share it, so the
# library is compiled once for both. FUZZ_SECONDS: per target (600 for a long run).
SANITIZE_BUILD ?= build-sanitize
FUZZ_SECONDS ?= 60

DEB_PACKAGES := build-essential cmake clang clang-format libclang-rt-14-dev libomp-dev doctest-dev libcli11-dev nlohmann-json3-dev libopenmpi-dev openmpi-bin fortunes
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: all build configure test deps demo format clean sanitize-configure test-sanitize fuzz

all: build

configure:
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=Release $(CMAKE_FLAGS)

build: configure
	cmake --build $(BUILD) -j $(JOBS)

test: build
	ctest --test-dir $(BUILD) --output-on-failure

sanitize-configure:
	cmake -S . -B $(SANITIZE_BUILD) -DCMAKE_BUILD_TYPE=Release -DCMAKE_CXX_COMPILER=clang++ \
	  -DSESSA_CUDA=OFF -DSESSA_SANITIZE=ON -DSESSA_FUZZ=ON $(CMAKE_FLAGS)

# Any ASan or UBSan report fails the test (UBSan is also built not to recover).
test-sanitize: sanitize-configure
	cmake --build $(SANITIZE_BUILD) -j $(JOBS)
	ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
	  ctest --test-dir $(SANITIZE_BUILD) --output-on-failure

fuzz: sanitize-configure
	cmake --build $(SANITIZE_BUILD) -j $(JOBS) --target fuzzers
	bash tests/fuzz/run_fuzzers.sh $(SANITIZE_BUILD) $(FUZZ_SECONDS)

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
	rm -rf $(BUILD) $(SANITIZE_BUILD)
