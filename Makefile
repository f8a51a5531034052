# The two commands a newcomer needs: `make run` and `make test`.
# Both install missing Debian packages first (.ci/deps, apt-get).
JOBS   ?= $(shell nproc)
BUILD  ?= build
SAN    ?= build-san
DEB    ?= build-deb
CONF   ?=
# Warnings are errors in the developer and CI builds made here; a plain
# `cmake` (a packager's build) leaves SLUICE_WERROR off.
WERROR ?= -DSLUICE_WERROR=ON

.PHONY: all deps build build-san build-daemon run test format format-check bench bench-smoke bench-accept \
	fuzz soak clean deb test-package

all: build

deps:
	@bash .ci/deps

# Release build (jemalloc, -O2): what `make run` and the benchmarks use.
build: deps
	@cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo $(WERROR) >/dev/null
	@cmake --build $(BUILD) -j $(JOBS)

# Sanitizer build (address + undefined, libc malloc): what `make test` uses.
build-san: deps
	@cmake -S . -B $(SAN) -DCMAKE_BUILD_TYPE=Debug -DSLUICE_SANITIZE=address,undefined $(WERROR) >/dev/null
	@cmake --build $(SAN) -j $(JOBS)

run: build
	./$(BUILD)/core/server/sluiced $(if $(CONF),-c $(CONF))

# The memory-limit tests (tests/e2e/test_resources.py) run the release
# build's sluiced under ulimit -v, which ASan cannot run under.
# tests/run-ctest: a skipped test (exit 77) is listed, and fails the run
# when CI is set (.ci/run). Each test has its own TIMEOUT (tests/CMakeLists.txt).
test: build-san build-daemon format-check
	@cd $(SAN) && SLUICE_RELEASE_BUILD=$(abspath $(BUILD)) $(CURDIR)/tests/run-ctest --output-on-failure -j 2

# Just the release sluiced (what `make test` needs of the release build).
build-daemon: deps
	@cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo $(WERROR) >/dev/null
	@cmake --build $(BUILD) -j $(JOBS) --target sluiced

format:
	@git ls-files '*.c' '*.h' | xargs clang-format -i

format-check: deps
	@files=$$(git ls-files --cached --others --exclude-standard '*.c' '*.h'); \
	if [ -n "$$files" ]; then clang-format --dry-run -Werror $$files; fi

# Load runs (bench/run-all, docs/benchmarks.md): esp-throughput and
# relay-5k (sluice and a private Postfix side by side), esp-envelope (runs a
# and b), relay-tools (Postfix's smtp-source/smtp-sink) and wan (when the
# kernel has netem), on loopback, ~15-20 min; prints where the one report
# (report.md, bench.json, PNG plots) was written. Sizes: BENCH_RUNS,
# BENCH_SCENARIOS, BENCH_MESSAGES, BENCH_ENVELOPE_MESSAGES,
# BENCH_RELAY_TOOLS_N (bench/run-all --help).
bench: build
	@bench/run-all --no-build --build-dir $(BUILD)

bench-smoke: build
	@bench/run-all --no-build --build-dir $(BUILD) --smoke

# Reception alone: 50,000 messages of 5 KiB into a durable spool.
bench-accept: build
	@bash bench/run-accept --no-build --build-dir $(BUILD)

# libFuzzer targets (clang), each for FUZZ_SECONDS (default 60); `make test`
# replays their seed corpora once.
fuzz: deps
	@tests/fuzz/run

# Long reliability run (kills, sink outages, steady load), SOAK_MINUTES=30.
soak: build
	@SLUICE_BUILD=$(BUILD) tests/soak/run --minutes $(or $(SOAK_MINUTES),30)

# Debian packages (CPack's DEB generator): $(DEB)/sluice_<version>_amd64.deb
# and sluice-bench_<version>_amd64.deb, the installed layout, built as a
# packager would (no -Werror), stripped. docs/operations.md, "Deploying".
deb: deps
	@cmake -S . -B $(DEB) -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_INSTALL_PREFIX=/usr >/dev/null
	@cmake --build $(DEB) -j $(JOBS) --target sluiced-fhs sluicectl-fhs sluice-source sluice-sink \
		sluice-install-files
	@cd $(DEB) && { cpack -G DEB > cpack.log 2>&1 || { cat cpack.log; exit 1; }; }
	@ls -1 $(DEB)/*.deb

# The .deb on a fresh Debian 12 root (tests/package/test-package): install,
# run as the unit does, operate, purge. Root, and the network once
# (debootstrap, cached in /var/tmp); not part of `make test`.
test-package: deb
	@tests/package/test-package $(DEB)

clean:
	rm -rf $(BUILD) $(SAN) $(DEB)
