# nerve: the two quick-start commands are `make run` and `make test`.
BUILD ?= build
BUILD_TYPE ?= RelWithDebInfo
CMAKE_ARGS ?=
# One test at a time: `make test CTEST_ARGS=--parallel 2` halves the time, but two
# timing-sensitive tests flaked once each that way on CI (tests/README.md).
CTEST_ARGS ?=

.PHONY: all deps configure build run test unit blackbox bench bench-deliver format clean

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
	ctest --test-dir $(BUILD) --output-on-failure $(CTEST_ARGS)

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
