# nerve: the two quick-start commands are `make run` and `make test`.
BUILD ?= build
BUILD_TYPE ?= RelWithDebInfo
CMAKE_ARGS ?=
# The unit tier two at a time, the others one at a time: `make test CTEST_ARGS=--parallel 2`
# halves the time, but two timing-sensitive black-box tests flaked once each that way on
# CI (tests/README.md).
CTEST_ARGS ?=

.PHONY: all deps configure build run test unit blackbox bench bench-deliver format clean \
	package test-package

all: build

deps:
	./.ci/install-deps

$(BUILD)/build.ninja:
	cmake -S . -B $(BUILD) -G Ninja -DCMAKE_BUILD_TYPE=$(BUILD_TYPE) $(CMAKE_ARGS)

configure: deps $(BUILD)/build.ninja

build: configure
	cmake --build $(BUILD)

run: build
	./$(BUILD)/runtime/nerve run

test: build
	ctest --test-dir $(BUILD) --output-on-failure -L unit --parallel 2 $(CTEST_ARGS)
	ctest --test-dir $(BUILD) --output-on-failure -LE unit $(CTEST_ARGS)
	$(MAKE) fuzz-smoke

# The Debian package in $(BUILD) (packaging/README.md): only what it holds is built.
package: configure
	cmake --build $(BUILD) --target nerve nerve_package_files
	cd $(BUILD) && cpack -G DEB

# Builds, lints, installs, runs, removes and purges the package on this machine
# (tests/package/run; root). CI runs it after `make test`. The build first, so
# that ctest knows the test in a build dir configured before it existed.
test-package: configure
	cmake --build $(BUILD) --target nerve_package_files
	NERVE_PACKAGE_TEST=1 ctest --test-dir $(BUILD) --output-on-failure -L package

unit: build
	ctest --test-dir $(BUILD) --output-on-failure -L unit

blackbox: build
	ctest --test-dir $(BUILD) --output-on-failure -L 'blackbox|faults'

bench: build
	./bench/publish

bench-deliver: build
	./bench/deliver

format:
	clang-format -i $$(git ls-files '*.cpp' '*.hpp')

clean:
	rm -rf $(BUILD)

.PHONY: bench-replay
bench-replay: build
	./bench/replay

.PHONY: bench-cluster bench-replication
bench-cluster: build
	./bench/cluster

bench-replication: build
	./bench/replication

# libFuzzer harnesses (tests/fuzz/README.md), built with clang in their own tree.
FUZZ_BUILD ?= build-fuzz
FUZZ_SECONDS ?= 600
FUZZERS = event_body config agent_line http_request resp_request link_frame
.PHONY: fuzz-build fuzz fuzz-smoke
fuzz-build: deps
	CXX=clang++ cmake -S tests/fuzz -B $(FUZZ_BUILD) -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo
	cmake --build $(FUZZ_BUILD)

fuzz: fuzz-build
	tests/fuzz/run $(FUZZ_BUILD) $(FUZZ_SECONDS) $(FUZZERS)

fuzz-smoke: fuzz-build
	tests/fuzz/run $(FUZZ_BUILD) 5 $(FUZZERS)

# Sanitizer runs (tests/README.md, "Sanitizers"): not part of `make test`, too slow
# for CI's budget. Each builds its own tree without tcmalloc; tests/sanitize/check-reports
# fails a test on any report of any process it started.
# test-sanitize: ASan+UBSan (LeakSanitizer at exit), the unit and black-box tiers.
# SANITIZE_CTEST_ARGS picks others, e.g. SANITIZE_CTEST_ARGS="-L faults".
SANITIZE_CTEST_ARGS ?= -L 'unit|blackbox'
.PHONY: test-sanitize test-tsan
test-sanitize: deps
	cmake --preset asan
	cmake --build build-asan
	ctest --test-dir build-asan --output-on-failure $(SANITIZE_CTEST_ARGS)

# test-tsan: ThreadSanitizer, the unit tier (actors on CAF's deterministic scheduler,
# the engine, the log on RocksDB, the etcd client, the RESP listener, the cluster gate),
# linked with CAF and RocksDB built instrumented by tests/sanitize/tsan-deps (once, ~35 min).
test-tsan: deps
	tests/sanitize/tsan-deps
	cmake --preset tsan
	cmake --build build-tsan --target nerve_unit_tests
	ctest --test-dir build-tsan --output-on-failure -L unit

# bench/soak: an hour at half the measured capacity, watched for leaks (docs/benchmarks.md,
# "soak"); SOAK_ARGS=--minutes 3 for the quick check. Not part of CI.
SOAK_ARGS ?=
.PHONY: soak
soak: build
	./bench/soak $(SOAK_ARGS)
