# Flinger's build, test and demo entry points. Every target installs what it
# needs (Go tools pinned below) so that a fresh machine only needs Go.
GO          ?= go
BIN         := bin
STATICCHECK := honnef.co/go/tools/cmd/staticcheck@v0.8.2
GOBIN_DIR   := $(shell $(GO) env GOPATH)/bin
PKGS        := ./...
FUZZTIME    ?= 20s

.PHONY: all build demo test test-deps test-short lint fmt vet staticcheck fuzz bench clean images

all: build

build:
	CGO_ENABLED=0 $(GO) build -trimpath -o $(BIN)/flinger ./cmd/flinger

## demo: run the one-machine lab with the example jobs; exits 0 only if every job ends as expected.
demo: build
	./$(BIN)/flinger lab --demo --listen 127.0.0.1:0

## test: every test, with the race detector.
test: test-deps
	$(GO) test -race -count=1 -timeout 20m $(PKGS)

## test-deps: the OpenSSH server the SSH tests run against, and the OpenSSH
## client and zstd the provisioning benchmark's baselines run (Debian's packages).
test-deps:
	@if [ ! -x /usr/sbin/sshd ] || [ ! -x /usr/lib/openssh/sftp-server ] || ! command -v ssh >/dev/null || ! command -v zstdcat >/dev/null; then \
	  echo "installing openssh-server, openssh-client and zstd for the SSH tests and the provisioning benchmark"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends openssh-server openssh-sftp-server openssh-client zstd; \
	fi

test-short:
	$(GO) test -count=1 -short $(PKGS)

lint: fmt vet staticcheck

fmt:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi

vet:
	$(GO) vet $(PKGS)

staticcheck:
	@test -x $(GOBIN_DIR)/staticcheck || $(GO) install $(STATICCHECK)
	$(GOBIN_DIR)/staticcheck $(PKGS)

## fuzz: run every fuzz target for FUZZTIME each.
fuzz:
	@for pkg in $$($(GO) list $(PKGS)); do \
	  for t in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz'); do \
	    echo "== $$pkg $$t"; $(GO) test $$pkg -run '^$$' -fuzz "^$$t$$" -fuzztime $(FUZZTIME) || exit 1; \
	  done; \
	done

## bench: the benchmark suite; writes bench/results.json and bench/report.md.
bench: build test-deps
	$(GO) run ./cmd/flinger-bench -flinger $(BIN)/flinger -out bench

## images: static flinger and nats-server binaries in two images FROM scratch,
## flinger:dev (with busybox as /bin/sh) and flinger-nats:dev (deploy/cluster).
images:
	GO=$(GO) deploy/images/build.sh

clean:
	rm -rf $(BIN)
