# mirror-img: GNU Makefile.  `make` builds build/mirror-img and build/mirror-img-shim.so.
PREFIX ?= /usr/local
BINDIR ?= $(PREFIX)/bin
LIBDIR ?= $(PREFIX)/lib
MANDIR ?= $(PREFIX)/share/man
DATADIR ?= $(PREFIX)/share
DESTDIR ?=

CC ?= gcc
CFLAGS ?= -O2 -g
B ?= build

PKGS := libqcow zlib libzstd libnbd libcrypto
PKG_CFLAGS = $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS = $(shell pkg-config --libs $(PKGS) 2>/dev/null)

MI_CFLAGS = -std=gnu11 -Wall -Wextra -D_GNU_SOURCE -D_FILE_OFFSET_BITS=64 -pthread \
	-Ilib -Iformats -DMI_LIBDIR='"$(LIBDIR)"' $(PKG_CFLAGS) $(CFLAGS) $(EXTRA_CFLAGS)
MI_LDFLAGS = $(LDFLAGS) $(EXTRA_LDFLAGS)

# The shim links nothing but libc: it is built from its own file, the journal's layout and
# writer's side, /proc liveness and the base (util).
SHIM_SRC := lib/shim.c lib/journal-layout.c lib/journal-writer.c lib/proc.c lib/util.c
LIB_SRC := $(filter-out lib/shim.c,$(wildcard lib/*.c))
FMT_SRC := $(wildcard formats/*.c)
CLI_SRC := $(wildcard cli/*.c)
CORE_OBJ := $(patsubst %.c,$(B)/%.o,$(LIB_SRC) $(FMT_SRC))
CLI_OBJ := $(patsubst %.c,$(B)/%.o,$(CLI_SRC))
UNIT_SRC := $(wildcard tests/unit/test-*.c)
UNIT_BIN := $(patsubst tests/unit/%.c,$(B)/tests/%,$(UNIT_SRC))
HDRS := $(wildcard lib/*.h formats/*.h cli/*.h)

FAULT_LIB := $(B)/tests/shortio.so

all: $(B)/mirror-img $(B)/mirror-img-shim.so $(UNIT_BIN) $(FAULT_LIB)

# Install missing Debian packages (build and test dependencies) when run as root.
deps: $(B)/.deps
$(B)/.deps: tests/deps.sh
	@mkdir -p $(B)
	@sh tests/deps.sh
	@touch $@

$(B)/%.o: %.c $(HDRS) | $(B)/.deps
	@mkdir -p $(dir $@)
	$(CC) $(MI_CFLAGS) -c -o $@ $<

$(B)/mirror-img: $(CLI_OBJ) $(CORE_OBJ)
	$(CC) $(MI_CFLAGS) -o $@ $^ $(MI_LDFLAGS) $(PKG_LIBS) -lm

$(B)/mirror-img-shim.so: $(SHIM_SRC) lib/journal-layout.h lib/journal-writer.h lib/proc.h lib/util.h | $(B)/.deps
	@mkdir -p $(B)
	$(CC) -std=gnu11 -Wall -Wextra -D_GNU_SOURCE -Ilib -O2 -g -fPIC -shared \
		-fvisibility=hidden -fexceptions -o $@ $(SHIM_SRC) -ldl $(EXTRA_SHIM_FLAGS)

# The fault-injection library of tests/faults.bats (short reads and writes, EINTR): libc only.
$(FAULT_LIB): tests/faults/shortio.c | $(B)/.deps
	@mkdir -p $(dir $@)
	$(CC) -std=gnu11 -Wall -Wextra -D_GNU_SOURCE -O2 -g -fPIC -shared -fvisibility=hidden \
		-o $@ $< -ldl

$(B)/tests/%: tests/unit/%.c $(CORE_OBJ) tests/unit/tap.h
	@mkdir -p $(dir $@)
	$(CC) $(MI_CFLAGS) -Itests/unit -o $@ $(filter %.c %.o,$^) $(MI_LDFLAGS) $(PKG_LIBS) -lm

# Tests: the bats suites against the normal build, then against an ASan/UBSan build.
check: all
	$(MAKE) B=build-asan CFLAGS="-O1 -g -fno-omit-frame-pointer" \
		EXTRA_CFLAGS="-fsanitize=address,undefined -fno-sanitize-recover=undefined" \
		EXTRA_LDFLAGS="-fsanitize=address,undefined" build-asan/mirror-img $(patsubst $(B)/%,build-asan/%,$(UNIT_BIN))
	@bash tests/run.sh

demo: all
	@bash tests/demo.sh

bench: all
	@bash tests/bench/run.sh

# The live mirror for SOAK_SECONDS (default 1800) on tmpfs, ext4, XFS and btrfs; not part
# of check.  Needs root (loop devices, mount).
soak: all
	@bash tests/soak.sh

install: all
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(LIBDIR)/mirror-img $(DESTDIR)$(MANDIR)/man1 \
		$(DESTDIR)$(MANDIR)/man5 $(DESTDIR)$(DATADIR)/bash-completion/completions \
		$(DESTDIR)$(DATADIR)/zsh/vendor-completions $(DESTDIR)$(DATADIR)/fish/vendor_completions.d
	install -m 0755 $(B)/mirror-img $(DESTDIR)$(BINDIR)/mirror-img
	install -m 0644 $(B)/mirror-img-shim.so $(DESTDIR)$(LIBDIR)/mirror-img/mirror-img-shim.so
	install -m 0644 man/mirror-img.1 $(DESTDIR)$(MANDIR)/man1/mirror-img.1
	install -m 0644 man/mirror-img-journal.5 $(DESTDIR)$(MANDIR)/man5/mirror-img-journal.5
	install -m 0644 completions/mirror-img.bash $(DESTDIR)$(DATADIR)/bash-completion/completions/mirror-img
	install -m 0644 completions/_mirror-img $(DESTDIR)$(DATADIR)/zsh/vendor-completions/_mirror-img
	install -m 0644 completions/mirror-img.fish $(DESTDIR)$(DATADIR)/fish/vendor_completions.d/mirror-img.fish

uninstall:
	rm -f $(DESTDIR)$(BINDIR)/mirror-img $(DESTDIR)$(LIBDIR)/mirror-img/mirror-img-shim.so \
		$(DESTDIR)$(MANDIR)/man1/mirror-img.1 $(DESTDIR)$(MANDIR)/man5/mirror-img-journal.5 \
		$(DESTDIR)$(DATADIR)/bash-completion/completions/mirror-img \
		$(DESTDIR)$(DATADIR)/zsh/vendor-completions/_mirror-img \
		$(DESTDIR)$(DATADIR)/fish/vendor_completions.d/mirror-img.fish
	-rmdir $(DESTDIR)$(LIBDIR)/mirror-img

clean:
	rm -rf build build-asan

.PHONY: all deps check demo bench soak install uninstall clean
.DELETE_ON_ERROR:

# ---- Fuzzing: libFuzzer harnesses (tests/fuzz/) built with clang-14 into $(B)/fuzz/.
# `make fuzz` builds them, makes the seed corpora (tests/fuzz/seeds.sh), replays the saved
# regression inputs and runs each harness for FUZZ_SECONDS; it fails on any crash.
FUZZ_CC ?= clang-14
FUZZ_SECONDS ?= 60
FZ := $(B)/fuzz
FUZZ_CFLAGS = -std=gnu11 -Wall -Wextra -D_GNU_SOURCE -D_FILE_OFFSET_BITS=64 -pthread \
	-Ilib -Iformats -DMI_LIBDIR='"$(LIBDIR)"' $(PKG_CFLAGS) -g -O1 -fno-omit-frame-pointer \
	-fsanitize=address,undefined -fno-sanitize-recover=undefined -DL2_CACHE_BYTES=4096
FUZZ_OBJ := $(patsubst %.c,$(FZ)/obj/%.o,$(LIB_SRC) $(FMT_SRC))
FUZZ_BIN := $(FZ)/fuzz-qcow2 $(FZ)/fuzz-journal $(FZ)/fuzz-json

$(FZ)/obj/%.o: %.c $(HDRS) | $(B)/.deps
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer-no-link -c -o $@ $<

# An archive: each harness links only the objects it uses.
$(FZ)/libmi.a: $(FUZZ_OBJ)
	rm -f $@
	ar rcs $@ $^

$(FZ)/fuzz-%: tests/fuzz/fuzz-%.c $(FZ)/libmi.a $(HDRS)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer -o $@ $< $(FZ)/libmi.a $(PKG_LIBS) -lm

fuzz-build: $(FUZZ_BIN)

fuzz: $(FUZZ_BIN) $(B)/mirror-img $(B)/mirror-img-shim.so
	@FUZZ_SECONDS=$(FUZZ_SECONDS) MI=$(abspath $(B))/mirror-img bash tests/fuzz/run.sh $(FZ)

# ---- Valgrind (memcheck): a copy each way, a follow with a writer under the shim, and
# the shim inside a writer, each with --error-exitcode=1 --leak-check=full
# (tests/valgrind/run.sh; suppressions for system libraries in tests/valgrind/mirror-img.supp).
check-valgrind: $(B)/mirror-img $(B)/mirror-img-shim.so
	@MI=$(abspath $(B))/mirror-img bash tests/valgrind/run.sh

.PHONY: fuzz fuzz-build check-valgrind
