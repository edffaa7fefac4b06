# Builds every lesson, the tools and the tests into build/.
#
#   make               every lesson (with CUDA when nvcc is found)
#   make NO_CUDA=1     CPU-only binaries with the same flags and output
#   make NO_MPI=1      no mpirun support, even where mpicc is found
#   make NCCL_HOME=DIR NCCL from DIR/include and DIR/lib (else the pip wheel, the toolkit's, the system's)
#   make BUNDLE=DIR    also the headers and libraries of a folder made by tools/gpu_bundle.sh
#   make lesson-01     build/hello_gpu          make run     build and run lesson 01
#   make lesson-02     build/multi_gpu          make diff-02 what lesson 02 adds to lesson 01
#   make lesson-03     build/multi_node         make diff-03 what lesson 03 adds to lesson 02
#   make lesson-04     build/ddp_overlap        make diff-04 what lesson 04 adds to lesson 02
#   make demo-multinode  a two-node job on this machine
#   make test          build and run the test suite (make tests: only build it)
#   make cuda-on-cpu   lesson 01 and the GPU suites on CUDA on the CPU, a stand-in that runs
#                      CUDA code without a GPU (tests/cuda_on_cpu), in build/cuda-on-cpu
#                      (ASAN=1: with AddressSanitizer, in build/cuda-on-cpu-asan)
#   make asan          the CPU suite on a build with AddressSanitizer and UBSan (build/asan)
#   make memcheck      one epoch of lesson 01 under valgrind; any error or leak fails
#   make fuzz          every libFuzzer target of tests/fuzz for FUZZ_SECONDS (30) each
#   make soak          16 ranks, 3 nodes x 4 ranks, 50 jobs back to back on one port
#   make bench-01      median time per epoch of lesson 01 at defaults
#   make bench-02      the same of lesson 02 with 1 and 2 ranks (free and --bind), and of two
#                      1-rank runs at once
#   make bench-04      lesson 04 overlapped and not (--no-overlap), 1, 2 and 4 ranks, both presets
#   make bench         every lesson beside PyTorch, with plots, into results/
#   make check-01      a lesson's self-check on the CPU, PASS or FAIL line by line (check-02, check-03)
#   make clean

CUDA_HOME ?= /usr/local/cuda
NVCC ?= $(shell command -v nvcc 2>/dev/null || ls $(CUDA_HOME)/bin/nvcc 2>/dev/null)
ifdef NO_CUDA
NVCC :=
endif
# CUDA_ON_CPU=1: the CUDA sources built for CUDA on the CPU (tests/cuda_on_cpu), a stand-in
# runtime that runs them without a GPU or CUDA; `make cuda-on-cpu` builds into build/cuda-on-cpu.
ifdef CUDA_ON_CPU
NVCC := tests/cuda_on_cpu/nvcc
endif
MPICC ?= $(shell command -v mpicc 2>/dev/null)
ifdef NO_MPI
MPICC :=
endif
BUILD := build
comma := ,

# NCCL, the first found of: NCCL_HOME=DIR (DIR/include, DIR/lib or lib64); the pip wheel
# nvidia-nccl-cu13 on python3's path (site-packages/nvidia/nccl, what a bare GPU machine
# with PyTorch has); the CUDA toolkit's; the system's. NCCL_HEADER is nccl.h, NCCL_SO the
# library file, NCCL_FROM says which (none for CUDA on the CPU).
PYTHON ?= python3
NCCL_WHEEL_FIND := import os, sys; print(next((d for d in (os.path.abspath(os.path.join(p or ".", \
	"nvidia", "nccl")) for p in sys.path) if os.path.isfile(os.path.join(d, "include", "nccl.h"))), ""))
# The library of NCCL in DIR/lib or DIR/lib64, with or without the libnccl.so link.
nccl_so_in = $(firstword $(wildcard $(foreach l,lib lib64,$(foreach f,libnccl.so libnccl.so.2,$(1)/$(l)/$(f)))))
ifneq ($(if $(CUDA_ON_CPU),,$(NVCC)),)
ifdef NCCL_HOME
NCCL_FROM := NCCL_HOME
NCCL_HEADER := $(wildcard $(NCCL_HOME)/include/nccl.h)
NCCL_SO := $(call nccl_so_in,$(NCCL_HOME))
else
NCCL_WHEEL := $(shell $(PYTHON) -c '$(NCCL_WHEEL_FIND)' 2>/dev/null)
ifneq ($(NCCL_WHEEL),)
NCCL_FROM := the pip wheel
NCCL_HEADER := $(NCCL_WHEEL)/include/nccl.h
NCCL_SO := $(call nccl_so_in,$(NCCL_WHEEL))
else
NCCL_HEADER := $(firstword $(wildcard $(CUDA_HOME)/include/nccl.h /usr/include/nccl.h))
NCCL_FROM := $(if $(findstring $(CUDA_HOME)/,$(NCCL_HEADER)),the CUDA toolkit,the system)
NCCL_SO := $(firstword $(wildcard $(CUDA_HOME)/lib64/libnccl.so /usr/lib/x86_64-linux-gnu/libnccl.so \
	/usr/lib/aarch64-linux-gnu/libnccl.so))
endif
endif
endif
NCCL_LIB := $(abspath $(dir $(NCCL_SO)))
# A library that ships only libnccl.so.2 (the wheel does) gets its libnccl.so link, for -lnccl,
# in the build folder; the programs still load libnccl.so.2 through the rpath.
NCCL_SO_LINK := $(if $(filter %.so.2,$(NCCL_SO)),$(BUILD)/nccl/libnccl.so)

# BUNDLE=DIR: a folder prepared by tools/gpu_bundle.sh (Criterion and libsodium, headers
# and libraries) for a machine that lacks them; an rpath lets the programs find its
# libraries, and DT_RPATH rather than RUNPATH (--disable-new-dtags) so that it also
# serves the libraries that libcriterion.so pulls in.
BUNDLE_CPPFLAGS := $(if $(BUNDLE),-I$(abspath $(BUNDLE))/include)
BUNDLE_LIB := $(abspath $(BUNDLE))/lib
BUNDLE_LDLIBS := $(if $(BUNDLE),-L$(BUNDLE_LIB) -Wl$(comma)--disable-new-dtags$(comma)-rpath$(comma)$(BUNDLE_LIB))

# CC, CFLAGS, CPPFLAGS and LDFLAGS are the user's, from make's command line or the
# environment (`make CFLAGS='-O2 -g'`, `make CC=clang`): each changes only what it names.
# What the project needs whatever they hold is in DDP_CPPFLAGS, DDP_CFLAGS and LDLIBS.
CC ?= cc
CFLAGS ?= -O3 -march=native
DDP_CPPFLAGS := -D_DEFAULT_SOURCE -Icommon -MMD -MP
# Not -ffast-math: no errno from sqrtf, fused multiply-add, and the `omp simd` pragmas (no OpenMP runtime).
DDP_CFLAGS := -std=c11 -fno-math-errno -ffp-contract=fast -fopenmp-simd -Wall -Wextra -Werror
ALL_CFLAGS = $(DDP_CPPFLAGS) $(BUNDLE_CPPFLAGS) $(CUDA_CPPFLAGS) $(CPPFLAGS) $(DDP_CFLAGS) $(CFLAGS)
LDLIBS := -Wl,--as-needed -lm -pthread $(BUNDLE_LDLIBS)
# Whether a header is there: $(call have_header,sodium.h) is yes or empty.
have_header = $(shell printf '\043include <$(1)>\n' | $(CC) $(BUNDLE_CPPFLAGS) -E -x c - >/dev/null 2>&1 && echo yes)
# libsodium: lesson 03's rendezvous proves each node's token with it (random challenges,
# HMAC-SHA256). Without it, lesson 03 and its tests are left out of the build; the rest is not.
HAVE_SODIUM := $(call have_header,sodium.h)
SODIUM_MISSING := libsodium: not found: lesson 03 and its tests left out (./setup.sh installs libsodium-dev, or BUNDLE=DIR)
ifneq ($(HAVE_SODIUM),)
LDLIBS += -lsodium
endif
# Criterion: the tests' framework; `make all` does without it.
HAVE_CRITERION := $(call have_header,criterion/criterion.h)
CRITERION_MISSING := not found: make tests cannot build the tests (./setup.sh installs libcriterion-dev, or BUNDLE=DIR)
BUNDLE_USED := : its headers and libraries, with an rpath
BUNDLE_ODD := : no MANIFEST there, so not a folder made by tools/gpu_bundle.sh
BUNDLE_FOUND := $(abspath $(BUNDLE))$(if $(wildcard $(BUNDLE)/MANIFEST),$(BUNDLE_USED),$(BUNDLE_ODD))
ifneq ($(CUDA_ON_CPU),)
CONFIG := cuda-on-cpu
NVCCFLAGS := -O2 -Icommon $(BUNDLE_CPPFLAGS) -DHAVE_CUDA -Xcompiler -Wall,-Wextra,-Werror
CUDA_CPPFLAGS := -DHAVE_CUDA -Itests/cuda_on_cpu
LDLIBS += -lstdc++
else ifneq ($(NVCC),)
CONFIG := cuda
# Without a GPU to ask, build for every architecture from Turing to Hopper, plus PTX
# that the driver can compile for a newer GPU.
CUDA_ARCH ?= $(if $(shell nvidia-smi -L 2>/dev/null),-arch=native,$(foreach a,75 80 86 89 90,-gencode arch=compute_$(a),code=sm_$(a)) -gencode arch=compute_90,code=compute_90)
# -lineinfo: compute-sanitizer's and ncu's reports name the source line (no effect on the code).
NVCCFLAGS := -O3 -lineinfo $(CUDA_ARCH) -Icommon $(BUNDLE_CPPFLAGS) -DHAVE_CUDA -Xcompiler -Wall,-Wextra,-Werror
CUDA_CPPFLAGS := -DHAVE_CUDA -I$(CUDA_HOME)/include
LDLIBS += -L$(CUDA_HOME)/lib64 -lcudart_static -lstdc++ -ldl -lrt -lpthread
ifneq ($(NCCL_HEADER),)
ifneq ($(NCCL_SO),)
HAVE_NCCL := yes
# NCCL's folder first, so that its nccl.h wins over another one in the toolkit's.
CUDA_CPPFLAGS := -DHAVE_NCCL -I$(dir $(NCCL_HEADER)) $(CUDA_CPPFLAGS)
# NCCL is a shared library: the rpath lets the programs find it without LD_LIBRARY_PATH.
LDLIBS += -L$(if $(NCCL_SO_LINK),$(abspath $(dir $(NCCL_SO_LINK))),$(NCCL_LIB)) -Wl,-rpath,$(NCCL_LIB) -lnccl
endif
endif
else
CONFIG := cpu
endif
ifneq ($(MPICC),)
CONFIG := $(CONFIG)-mpi
endif
OBJ := $(BUILD)/obj-$(CONFIG)

COMMON_C := $(filter-out common/mpi_world.c,$(wildcard common/*.c))
# What lesson 03 needs libsodium for: its rendezvous, the program, and the tests that run it.
LESSON03_TESTS := $(BUILD)/tests/test_rendezvous $(BUILD)/tests/test_multi_node \
	$(BUILD)/tests/test_scripts $(BUILD)/tests/test_mpi
ifeq ($(HAVE_SODIUM),)
COMMON_C := $(filter-out common/rendezvous.c,$(COMMON_C))
NEED_SODIUM := need-sodium
endif
COMMON_CU := $(if $(NVCC),$(wildcard common/*.cu))
COMMON_OBJ := $(COMMON_C:common/%.c=$(OBJ)/common/%.o) $(COMMON_CU:common/%.cu=$(OBJ)/common/%.cu.o) \
	$(if $(CUDA_ON_CPU),$(OBJ)/tests/cuda_on_cpu/cuda_on_cpu.o)
# An archive, so that each program links only the modules it uses.
COMMON_LIB := $(OBJ)/libcommon.a

LESSONS := $(BUILD)/hello_gpu $(BUILD)/multi_gpu $(if $(HAVE_SODIUM),$(BUILD)/multi_node) $(BUILD)/ddp_overlap
# hostfile: hosts.txt checked and listed by common/hostfile.c, for the launcher scripts.
TOOLS := $(BUILD)/allreduce_bench $(BUILD)/hostfile

# Open MPI (optional): lesson 03's agent and the all-reduce benchmark learn to run under
# mpirun. Only they are compiled and linked with mpicc; nothing else needs MPI.
MPI_OBJ := $(if $(MPICC),$(OBJ)/common/mpi_world.o)
# Lesson 03's mpirun path, a file of its own (lessons/03_multi_node/under_mpirun.c).
MPIRUN_OBJ := $(if $(MPICC),$(OBJ)/lessons/03_multi_node/under_mpirun.o)
MPI_USERS := $(OBJ)/lessons/03_multi_node/multi_node.o $(OBJ)/tools/allreduce_bench.o $(MPIRUN_OBJ)
LINK_MPI := $(or $(MPICC),$(CC))
ifneq ($(MPICC),)
$(MPI_USERS) $(MPI_OBJ): CC := $(MPICC)
$(MPI_USERS): DDP_CPPFLAGS += -DHAVE_MPI
endif
TEST_SRC := $(wildcard tests/test_*.c)
TESTS := $(filter-out $(if $(HAVE_SODIUM),,$(LESSON03_TESTS)),$(TEST_SRC:tests/%.c=$(BUILD)/tests/%))
# (for CUDA on the CPU, without the NCCL suite: that build has no NCCL)
GPU_TEST_SRC := $(if $(NVCC),$(filter-out $(if $(CUDA_ON_CPU),tests/gpu/test_nccl.cu),$(wildcard tests/gpu/test_*.cu)))
GPU_TESTS := $(GPU_TEST_SRC:tests/gpu/%.cu=$(BUILD)/tests/gpu/%)

# Keep the objects of tests and tools between builds (make would delete them as
# intermediates); .PRECIOUS, not a bare .SECONDARY, which would also stop the stamps
# below from forcing a relink when the configuration or the build id changes.
.PRECIOUS: $(OBJ)/%.o $(OBJ)/%.cu.o $(BUILD)/fuzz/obj/%.o

.PHONY: all cuda-on-cpu lesson-01 lesson-02 lesson-03 lesson-04 run tests test asan memcheck fuzz soak bench bench-quick bench-01 bench-02 bench-04 check-01 check-02 check-03 diff-02 diff-03 diff-04 demo-multinode clean found need-sodium need-criterion FORCE
all: found $(LESSONS) $(TOOLS)

# One line per optional part, so that a build says what it could use.
found:
	@echo "nvcc: $(if $(NVCC),found ($(NVCC)): building with CUDA,$(if $(NO_CUDA),skipped (NO_CUDA=1),not found): CPU-only binaries)"
	@echo "MPI: $(if $(MPICC),found ($(MPICC)): lesson 03 and allreduce_bench also run under mpirun,$(if $(NO_MPI),skipped (NO_MPI=1),not found): no mpirun support)"
	@echo "NCCL: $(if $(HAVE_NCCL),found in $(NCCL_FROM) ($(NCCL_HEADER), $(NCCL_SO)),$(if $(NVCC),not found (header and library$(if $(NCCL_HOME), in NCCL_HOME=$(NCCL_HOME))),not used without CUDA)): $(if $(HAVE_NCCL),NCCL and ring backends,ring backend only)"
	@echo "$(if $(HAVE_SODIUM),libsodium: found: lesson 03 authenticates its nodes,$(SODIUM_MISSING))"
	@echo "Criterion: $(if $(HAVE_CRITERION),found: make tests builds the test suite,$(CRITERION_MISSING))"
	@echo "bundle: $(if $(BUNDLE),$(BUNDLE_FOUND),none (BUNDLE=DIR adds a folder made by tools/gpu_bundle.sh))"

# Where libsodium is missing, what needs it stops here with one line, before compiling.
need-sodium:
	@echo "error: $(SODIUM_MISSING)" >&2; exit 1
$(OBJ)/lessons/03_multi_node/multi_node.o $(OBJ)/tests/test_rendezvous.o: | $(NEED_SODIUM)
need-criterion:
	@echo "error: Criterion: $(CRITERION_MISSING)" >&2; exit 1
$(TESTS) $(GPU_TESTS): | $(if $(HAVE_CRITERION),,need-criterion)

lesson-01: found $(BUILD)/hello_gpu
lesson-02: found $(BUILD)/multi_gpu
lesson-03: found $(BUILD)/multi_node $(BUILD)/hostfile
lesson-04: found $(BUILD)/ddp_overlap

run: lesson-01
	./$(BUILD)/hello_gpu

# A stamp that changes when the configuration does, so switching relinks.
$(BUILD)/config-$(CONFIG):
	@mkdir -p $(BUILD) && rm -f $(BUILD)/config-* && touch $@
LINK_DEPS := $(BUILD)/config-$(CONFIG) $(NCCL_SO_LINK)

$(NCCL_SO_LINK): $(NCCL_SO)
	@mkdir -p $(@D) && ln -sfn $(abspath $(NCCL_SO)) $@

# The flags every object was compiled with, rewritten only when they change, so that
# `make CFLAGS=...` recompiles what it must and an unchanged build recompiles nothing.
$(OBJ)/flags: export FLAGS_TEXT = $(CC) $(ALL_CFLAGS) | $(NVCC) $(NVCCFLAGS) | $(LDFLAGS)
$(OBJ)/flags: FORCE
	@mkdir -p $(@D) && printf '%s\n' "$$FLAGS_TEXT" | cmp -s - $@ || printf '%s\n' "$$FLAGS_TEXT" >$@
FORCE:

$(OBJ)/%.o: %.c $(OBJ)/flags
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -c $< -o $@

$(OBJ)/%.cu.o: %.cu $(OBJ)/flags
	@mkdir -p $(dir $@)
	$(NVCC) $(NVCCFLAGS) -MMD -MP -c $< -o $@

# The runtime of CUDA on the CPU, C++.
$(OBJ)/%.o: %.cpp $(OBJ)/flags
	@mkdir -p $(dir $@)
	$(CXX) -std=c++17 -MMD -MP -Wall -Wextra -Werror -O2 $(CXXFLAGS) -c $< -o $@

$(COMMON_LIB): $(COMMON_OBJ)
	rm -f $@ && $(AR) rcs $@ $^

$(BUILD)/hello_gpu: $(OBJ)/lessons/01_hello_gpu/hello_gpu.o $(COMMON_LIB) $(LINK_DEPS)
	$(CC) $(DDP_CFLAGS) $(CFLAGS) $(LDFLAGS) $< $(COMMON_LIB) -o $@ $(LDLIBS)

$(BUILD)/multi_gpu: $(OBJ)/lessons/02_multi_gpu/multi_gpu.o $(COMMON_LIB) $(LINK_DEPS)
	$(CC) $(DDP_CFLAGS) $(CFLAGS) $(LDFLAGS) $< $(COMMON_LIB) -o $@ $(LDLIBS)

$(BUILD)/ddp_overlap: $(OBJ)/lessons/04_ddp_overlap/ddp_overlap.o $(COMMON_LIB) $(LINK_DEPS)
	$(CC) $(DDP_CFLAGS) $(CFLAGS) $(LDFLAGS) $< $(COMMON_LIB) -o $@ $(LDLIBS)

# The build id lets the rendezvous refuse a node that runs other code than the master.
BUILD_ID := $(shell git describe --always --dirty 2>/dev/null || echo unknown)
$(OBJ)/lessons/03_multi_node/multi_node.o: DDP_CPPFLAGS += -DBUILD_ID='"$(BUILD_ID)"'
$(OBJ)/lessons/03_multi_node/multi_node.o: $(BUILD)/build-id-$(BUILD_ID)
$(BUILD)/build-id-$(BUILD_ID):
	@mkdir -p $(BUILD) && rm -f $(BUILD)/build-id-* && touch $@

$(BUILD)/multi_node: $(OBJ)/lessons/03_multi_node/multi_node.o $(MPIRUN_OBJ) $(MPI_OBJ) $(COMMON_LIB) $(LINK_DEPS)
	$(LINK_MPI) $(DDP_CFLAGS) $(CFLAGS) $(LDFLAGS) $(filter %.o,$^) $(COMMON_LIB) -o $@ $(LDLIBS)

$(BUILD)/allreduce_bench: $(OBJ)/tools/allreduce_bench.o $(OBJ)/tools/allreduce_sweep.o $(OBJ)/tools/ring_show.o $(MPI_OBJ) $(COMMON_LIB) $(LINK_DEPS)
	$(LINK_MPI) $(DDP_CFLAGS) $(CFLAGS) $(LDFLAGS) $(filter %.o,$^) $(COMMON_LIB) -o $@ $(LDLIBS)

$(BUILD)/hostfile: $(OBJ)/tools/hostfile.o $(COMMON_LIB) $(LINK_DEPS)
	$(CC) $(DDP_CFLAGS) $(CFLAGS) $(LDFLAGS) $< $(COMMON_LIB) -o $@ $(LDLIBS)

TEST_SUPPORT := $(OBJ)/tests/support/proc.o $(OBJ)/tests/support/losses.o \
	$(OBJ)/tests/support/bound.o
$(BUILD)/tests/%: $(OBJ)/tests/%.o $(TEST_SUPPORT) $(COMMON_LIB) $(LINK_DEPS)
	@mkdir -p $(dir $@)
	$(CC) $(DDP_CFLAGS) $(CFLAGS) $(LDFLAGS) $< $(TEST_SUPPORT) $(COMMON_LIB) -o $@ $(LDLIBS) -lcriterion

$(BUILD)/tests/gpu/%: $(OBJ)/tests/gpu/%.cu.o $(COMMON_LIB) $(LINK_DEPS)
	@mkdir -p $(dir $@)
	$(CC) $(DDP_CFLAGS) $(CFLAGS) $(LDFLAGS) $< $(COMMON_LIB) -o $@ $(LDLIBS) -lcriterion

tests: $(TESTS) $(GPU_TESTS)

# CUDA on the CPU: lesson 01 and the GPU suites built against a stand-in runtime that runs
# CUDA code without a GPU (tests/cuda_on_cpu/cuda_runtime.h), with the host's C++ compiler,
# into a folder of their own; make test runs those suites too, so every machine checks the
# CUDA kernels against the CPU twin.
# ASAN=1: with AddressSanitizer (device, shared and host memory), in build/cuda-on-cpu-asan.
CUDA_ON_CPU_BUILD := $(BUILD)/cuda-on-cpu$(if $(ASAN),-asan)
CUDA_ON_CPU_ASAN := -fsanitize=address -fno-omit-frame-pointer -g
CUDA_ON_CPU_TESTS := $(patsubst tests/gpu/%.cu,$(CUDA_ON_CPU_BUILD)/tests/gpu/%,\
	$(filter-out tests/gpu/test_nccl.cu,$(wildcard tests/gpu/test_*.cu)))
cuda-on-cpu: $(if $(HAVE_CRITERION),,need-criterion)
	@$(MAKE) --no-print-directory CUDA_ON_CPU=1 NO_MPI=1 BUILD=$(CUDA_ON_CPU_BUILD) \
		$(if $(ASAN),CXXFLAGS="$(CUDA_ON_CPU_ASAN)" CFLAGS="-O1 $(CUDA_ON_CPU_ASAN)" \
		LDFLAGS=-fsanitize=address) $(CUDA_ON_CPU_BUILD)/hello_gpu $(CUDA_ON_CPU_TESTS)

# Criterion runs each suite's tests in parallel; GPU suites share one device, so --jobs 1.
# The tests run the programs of DDP_BUILD.
test: all tests cuda-on-cpu
	@DDP_BUILD=$(BUILD) tests/run_tests.sh $(TESTS) -- $(GPU_TESTS) $(CUDA_ON_CPU_TESTS)

# The CPU code, lessons and tests built with AddressSanitizer and UBSan (undefined behaviour
# fails) into a directory of their own, then the CPU suite on those programs; a report of
# any process, leaks included, fails it (tests/run_sanitized.sh). With clang, whose single
# sanitizer runtime writes UBSan's reports to the report files too (GCC's libubsan writes
# them to stderr only). Without MPI: Open MPI's own allocations would bury the findings;
# `make test` covers mpirun.
ASAN_CC ?= clang
ASAN_BUILD := $(BUILD)/asan
SANITIZE := -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer
# clang warns where -O1 leaves an `omp simd` loop unvectorized: a hint, not an error here.
SANITIZE_CFLAGS := -O1 -g $(SANITIZE) -Wno-pass-failed
asan:
	CFLAGS="$(SANITIZE_CFLAGS)" $(MAKE) --no-print-directory NO_CUDA=1 NO_MPI=1 CC=$(ASAN_CC) \
		BUILD=$(ASAN_BUILD) all tests
	@tests/run_sanitized.sh $(ASAN_BUILD) $(TEST_SRC:tests/%.c=$(ASAN_BUILD)/tests/%)

# valgrind on one epoch of lesson 01. A CPU build of its own without -march=native, as
# valgrind does not know every instruction of every CPU (AVX-512).
MEMCHECK_BUILD := $(BUILD)/memcheck
memcheck:
	CFLAGS="-O2 -g" $(MAKE) --no-print-directory NO_CUDA=1 NO_MPI=1 BUILD=$(MEMCHECK_BUILD) \
		$(MEMCHECK_BUILD)/hello_gpu
	valgrind --error-exitcode=1 --leak-check=full --errors-for-leak-kinds=all --show-leak-kinds=all \
		$(MEMCHECK_BUILD)/hello_gpu --epochs 1 --device cpu

# libFuzzer: every tests/fuzz/fuzz_NAME.c against common/ (CPU code, built with clang and
# the sanitizers into build/fuzz), each run for FUZZ_SECONDS on a copy of its seed corpus
# tests/fuzz/corpus/NAME/ (tests/fuzz/run.sh).
FUZZ_CC ?= clang
FUZZ_SECONDS ?= 30
FUZZ_BUILD := $(BUILD)/fuzz
FUZZ_CFLAGS := $(DDP_CPPFLAGS) $(DDP_CFLAGS) $(SANITIZE_CFLAGS)
FUZZERS := $(patsubst tests/fuzz/%.c,$(FUZZ_BUILD)/%,$(wildcard tests/fuzz/fuzz_*.c))
FUZZ_COMMON_OBJ := $(COMMON_C:common/%.c=$(FUZZ_BUILD)/obj/common/%.o)

$(FUZZ_BUILD)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer-no-link -c $< -o $@

$(FUZZ_BUILD)/fuzz_%: tests/fuzz/fuzz_%.c $(FUZZ_COMMON_OBJ)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer $< $(FUZZ_COMMON_OBJ) -o $@ -lsodium -lm -pthread

fuzz: $(FUZZERS)
	@tests/fuzz/run.sh $(FUZZ_SECONDS) $(FUZZ_BUILD) $(FUZZERS)

# Load on this machine's loopback: many ranks, many nodes, many jobs in a row (tests/soak.sh).
soak: lesson-02 lesson-03
	@tests/soak.sh $(BUILD)

bench-01: lesson-01
	@tools/bench_epoch.sh $(BUILD)/hello_gpu

# Median epoch time of lesson 02 on the CPU with 1 and 2 ranks, at defaults (2 ranks left
# to the scheduler, then bound to a CPU each), and of two 1-rank runs at once: half of
# that is the best 2 ranks can do on this machine.
bench-02: lesson-02
	@tools/bench_epoch.sh $(BUILD)/multi_gpu --device cpu --gpus 1
	@tools/bench_epoch.sh $(BUILD)/multi_gpu --device cpu --gpus 2
	@tools/bench_epoch.sh $(BUILD)/multi_gpu --device cpu --gpus 2 --bind
	@COPIES=2 tools/bench_epoch.sh $(BUILD)/multi_gpu --device cpu --gpus 1

# Lesson 04 with its buckets overlapped and not, 1, 2 and 4 ranks, both presets (medians).
bench-04: lesson-04
	@tools/bench_overlap.sh

# The whole matrix beside PyTorch, with plots (tools/bench.sh --help); bench-quick: a smoke run.
bench: all
	@tools/bench.sh
bench-quick: all
	@tools/bench.sh --quick

# A lesson's self-check for a class: runs it briefly on the CPU and prints PASS or FAIL
# per check, against expected values and PyTorch (tools/check_lesson.sh).
check-01: lesson-01
	@tools/check_lesson.sh 01 $(BUILD)
check-02: lesson-01 lesson-02
	@tools/check_lesson.sh 02 $(BUILD)
check-03: lesson-02 lesson-03
	@tools/check_lesson.sh 03 $(BUILD)

# What lesson 02 adds to lesson 01, and lesson 03 to lesson 02.
diff-02:
	@diff -u lessons/01_hello_gpu/hello_gpu.c lessons/02_multi_gpu/multi_gpu.c || true
diff-03:
	@diff -u lessons/02_multi_gpu/multi_gpu.c lessons/03_multi_node/multi_node.c || true
diff-04:
	@diff -u lessons/02_multi_gpu/multi_gpu.c lessons/04_ddp_overlap/ddp_overlap.c || true

# A two-node job on this machine: launch.sh starts both nodes through a local "remote shell".
# The ring backend, since two nodes of one machine may share its one GPU (NCCL refuses that).
demo-multinode: lesson-03
	DDP_RSH=tools/local_rsh.sh ./launch.sh --mode multi-node --master-node 127.0.0.1 \
		--worker-nodes 127.0.0.1 --gpus-per-node 1 --port $(or $(MASTER_PORT),29500) \
		--backend ring --epochs 10

clean:
	rm -rf $(BUILD)

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)
