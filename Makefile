# ngx_http_collab_module: build, test and demo.
#
#   make            build build/ngx_http_collab_module.so (installs missing packages first)
#   make test       build, then run the test suite (TEST=t/foo.t for one file, PROVE_FLAGS=...)
#   make test-asan  the same suite against an AddressSanitizer build
#   make run        start redis + nginx with the demo page (PORT=8080 REDIS_PORT=6390)
#   make stop       stop what `make run` started
#   make js         rebuild www/collab.js from the npm package clients/js
#
# The module is built against the distribution's nginx: the nginx-dev package ships the
# configured sources in $(NGX_SRC); nginx's configure writes everything into --builddir.

SHELL := /bin/bash
.DEFAULT_GOAL := build

# Debian packages needed to build, test and run. "a|b" = either one installed is enough
# (the first is installed when none is). Add what new tests need here, and only here.
DEB_PACKAGES := nginx|nginx-core nginx-dev libhiredis-dev libjansson-dev libssl-dev \
                redis-server redis-tools make gcc libc6-dev binutils perl file curl \
                openssl libio-socket-ssl-perl chromium npm|nodejs

NGX_SRC      ?= /usr/share/nginx/src
NGINX_BIN    ?= /usr/sbin/nginx
REDIS_SERVER ?= redis-server
PORT         ?= 8080
REDIS_PORT   ?= 6390
TEST         ?= t/
PROVE_FLAGS  ?=

MODULE_NAME := ngx_http_collab_module
SRC_DIR     := ngx_collab_module
# every source and header: any change rebuilds the module
SOURCES     := $(wildcard $(SRC_DIR)/*.c) $(wildcard $(SRC_DIR)/*.h)

BUILD_DIR   := build
ASAN_DIR    := build-asan
MODULE      := $(CURDIR)/$(BUILD_DIR)/$(MODULE_NAME).so
ASAN_MODULE := $(CURDIR)/$(ASAN_DIR)/$(MODULE_NAME).so
RUN_DIR     := $(CURDIR)/run

# AddressSanitizer build. nginx's configure appends --with-cc-opt to its own CFLAGS (which keep
# -W -Wall -Werror) and puts --with-ld-opt on the module's link line, so the .so gets
# DT_NEEDED libasan.so.8. The stock /usr/sbin/nginx is not instrumented, so the ASan runtime
# must come first in the process: every nginx command that loads this .so (start, -t, -s ...)
# needs
#     LD_PRELOAD=$(gcc -print-file-name=libasan.so)
# (without it nginx dies with "ASan runtime does not come first in initial library list";
# verify_asan_link_order=0 is NOT needed once it is preloaded) and
#     ASAN_OPTIONS=detect_leaks=0
# because LeakSanitizer reports nginx's own pool memory, never freed at exit by design, and
# turns every worker exit into "exited with code 1". ASan reports go to stderr, which nginx
# redirects to its error_log once the configuration is read.
ASAN_CC_OPT := -fsanitize=address -fno-omit-frame-pointer -g -O1
ASAN_LD_OPT := -fsanitize=address
ASAN_OPTIONS_DEFAULT := detect_leaks=0

SUDO = $(shell [ "$$(id -u)" = 0 ] || { command -v sudo >/dev/null && echo sudo; })

.PHONY: build build-asan deps test test-asan run stop bench bench-yjs bench-replica bench-cluster fuzz clean js

# ---------------------------------------------------------------------------------------------
# deps: install only what is missing; a no-op (one dpkg-query) when everything is there.

deps:
	@missing=""; \
	installed=" $$(dpkg-query -W -f='$${db:Status-Status} $${Package}\n' \
	    $(subst |, ,$(DEB_PACKAGES)) 2>/dev/null | awk '$$1 == "installed" {printf "%s ", $$2}')"; \
	for spec in $(foreach p,$(DEB_PACKAGES),'$(p)'); do \
	    found=""; \
	    for p in $${spec//|/ }; do \
	        case "$$installed" in *" $$p "*) found=1;; esac; \
	    done; \
	    [ -n "$$found" ] || missing="$$missing $${spec%%|*}"; \
	done; \
	[ -n "$$missing" ] || exit 0; \
	if [ "$$(id -u)" != 0 ] && [ -z "$(SUDO)" ]; then \
	    echo "deps: missing packages:$$missing (not root and no sudo: install them by hand)" >&2; \
	    exit 1; \
	fi; \
	echo "deps: installing$$missing"; \
	apt="$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get"; \
	if ! ls /var/lib/apt/lists/ 2>/dev/null | grep -q '_Packages'; then $$apt update; fi; \
	$$apt install -y --no-install-recommends $$missing || { $$apt update && $$apt install -y --no-install-recommends $$missing; }

# ---------------------------------------------------------------------------------------------
# build

# $(call ngx_configure,BUILDDIR,EXTRA-CONFIGURE-ARGS)
define ngx_configure
	@mkdir -p $(1)
	@echo "configure: $(NGX_SRC) -> $(1)/ (log in $(1)/configure.log)"
	@cd $(NGX_SRC) && . ./conf_flags && ./configure "$${NGX_CONF_FLAGS[@]}" $(2) \
	    --add-dynamic-module=$(CURDIR) --builddir=$(CURDIR)/$(1) \
	    > $(CURDIR)/$(1)/configure.log 2>&1 \
	  || { tail -n 30 $(CURDIR)/$(1)/configure.log; rm -f $(CURDIR)/$(1)/Makefile; exit 1; }
endef

# $(call ngx_make,BUILDDIR): nginx's Makefile knows the .c files and the headers listed in
# `config`; when any header changed, drop the module's objects so that headers missing from
# that list are honoured too. The touch covers sources nginx does not know (nothing to redo).
# Under `make -n` before the first configure there is no Makefile yet: only print the command.
define ngx_make
	$(if $(filter %.h,$?),rm -f $(1)/addon/$(SRC_DIR)/*.o)
	$(if $(wildcard $(1)/Makefile),+$(MAKE) --no-print-directory,@echo make) -f $(CURDIR)/$(1)/Makefile -C $(NGX_SRC) modules
	@touch $@
endef

build: $(BUILD_DIR)/$(MODULE_NAME).so

$(BUILD_DIR)/Makefile: config | deps
	$(call ngx_configure,$(BUILD_DIR),)

$(BUILD_DIR)/$(MODULE_NAME).so: $(BUILD_DIR)/Makefile $(SOURCES) | deps
	$(call ngx_make,$(BUILD_DIR))

build-asan: $(ASAN_DIR)/$(MODULE_NAME).so

$(ASAN_DIR)/Makefile: config | deps
	$(call ngx_configure,$(ASAN_DIR),--with-cc-opt='$(ASAN_CC_OPT)' --with-ld-opt='$(ASAN_LD_OPT)')

$(ASAN_DIR)/$(MODULE_NAME).so: $(ASAN_DIR)/Makefile $(SOURCES) | deps
	$(call ngx_make,$(ASAN_DIR))

# ---------------------------------------------------------------------------------------------
# tests: the harness (t/lib) reads COLLAB_MODULE, NGINX_BIN, REDIS_SERVER and COLLAB_ASAN
# (1 = LD_PRELOAD libasan into nginx and fail on any AddressSanitizer report).
# `prove -r t/` includes t/tls/: the core files again over TLS (COLLAB_TLS=1), the TLS
# stall/reload cases and HTTP/2 (curl --http2 and t/lib/Collab/H2.pm).

# $(call prove,MODULE,ASAN)
define prove
	COLLAB_MODULE=$(1) COLLAB_ASAN=$(2) NGINX_BIN=$(NGINX_BIN) REDIS_SERVER=$(REDIS_SERVER) \
	ASAN_OPTIONS="$${ASAN_OPTIONS:-$(ASAN_OPTIONS_DEFAULT)}" \
	prove -r -It/lib $(PROVE_FLAGS) $(TEST)
endef

test: build t/browser/node_modules t/metrics/node_modules clients/js/node_modules \
      t/yjs/node_modules
	$(call prove,$(MODULE),0)

# t/99-browser.t drives Debian's chromium with playwright-core (t/browser/package-lock.json).
# "npm|nodejs" above: NodeSource's nodejs (on these machines) ships npm and conflicts with
# Debian's npm package; without any nodejs, Debian's npm brings its nodejs along.
t/browser/node_modules: t/browser/package.json t/browser/package-lock.json | deps
	cd t/browser && npm ci --no-audit --no-fund --loglevel=error && touch node_modules

# t/106-metrics.t parses the collab_metrics output with a real Prometheus text-format parser
# (parse-prometheus-text-format, t/metrics/package-lock.json).
t/metrics/node_modules: t/metrics/package.json t/metrics/package-lock.json | deps
	cd t/metrics && npm ci --no-audit --no-fund --loglevel=error && touch node_modules

# t/111-js-client.t runs the tests of the npm package clients/js (node --test), which use the
# `ws` package as Node 20's WebSocket (clients/js/package-lock.json; no runtime dependency).
clients/js/node_modules: clients/js/package.json clients/js/package-lock.json | deps
	cd clients/js && npm ci --no-audit --no-fund --loglevel=error --ignore-scripts && touch node_modules

# www/collab.js is the package's script-tag build, committed so that `make run` needs no node;
# `make js` rebuilds it after a change to clients/js/src (t/111-js-client.t checks it is current).
js:
	node clients/js/scripts/build.mjs --out clients/js/dist/collab.js --out www/collab.js

# t/113-yjs.t drives the stock y-websocket client (yjs, y-websocket, y-protocols, ws) through
# nginx, t/114-yjs-browser.t the same in chromium with CodeMirror 6 (y-codemirror.next); exact
# versions in t/yjs/package-lock.json.
t/yjs/node_modules: t/yjs/package.json t/yjs/package-lock.json | deps
	cd t/yjs && npm ci --no-audit --no-fund --loglevel=error && touch node_modules

test-asan: build-asan t/metrics/node_modules t/yjs/node_modules
	$(call prove,$(ASAN_MODULE),1)

# ---------------------------------------------------------------------------------------------
# run / stop: a local redis and nginx serving www/, everything (logs, pids, temp) in run/.

# is the process of pid file $(1) alive and is its command line matching $(2)?
# (zombies count as gone)
define pid_alive
pid=$$(cat $(1) 2>/dev/null) && [ -n "$$pid" ] && [ -r /proc/$$pid/cmdline ] \
  && [ "$$(awk '{print $$3}' /proc/$$pid/stat 2>/dev/null)" != Z ] \
  && tr '\0' ' ' < /proc/$$pid/cmdline | grep -q -- '$(2)'
endef

# $(call stop_pidfile,PIDFILE,CMDLINE-PATTERN,LABEL): TERM, wait up to 10 s, then KILL
define stop_pidfile
	@if $(call pid_alive,$(1),$(2)); then \
	    echo "stopping $(3) (pid $$pid)"; kill -TERM $$pid; \
	    for i in $$(seq 100); do $(call pid_alive,$(1),$(2)) || break; sleep 0.1; done; \
	    if $(call pid_alive,$(1),$(2)); then echo "$(3) still running: KILL"; kill -KILL $$pid; fi; \
	fi; rm -f $(1)
endef

stop:
	$(call stop_pidfile,$(RUN_DIR)/nginx.pid,nginx,nginx)
	$(call stop_pidfile,$(RUN_DIR)/redis/redis.pid,redis,redis-server)

run: build stop
	@mkdir -p $(RUN_DIR)/conf $(RUN_DIR)/logs $(RUN_DIR)/redis $(RUN_DIR)/tmp
	@sed -e 's|@PORT@|$(PORT)|g' -e 's|@REDIS_PORT@|$(REDIS_PORT)|g' \
	     -e 's|@MODULE@|$(MODULE)|g' -e 's|@ROOT@|$(CURDIR)|g' \
	     conf/nginx.conf.in > $(RUN_DIR)/conf/nginx.conf
	@$(REDIS_SERVER) --port $(REDIS_PORT) --bind 127.0.0.1 --dir $(RUN_DIR)/redis \
	    --daemonize yes --pidfile $(RUN_DIR)/redis/redis.pid --logfile $(RUN_DIR)/logs/redis.log
	@for i in $$(seq 50); do \
	    if $(call pid_alive,$(RUN_DIR)/redis/redis.pid,redis) \
	       && [[ "$$( (exec 3<>/dev/tcp/127.0.0.1/$(REDIS_PORT) && printf 'PING\r\n' >&3 \
	                  && read -r -t 1 line <&3 && echo "$$line") 2>/dev/null)" == +PONG* ]]; then \
	        echo "redis-server on 127.0.0.1:$(REDIS_PORT) (pid $$pid, log run/logs/redis.log)"; exit 0; \
	    fi; sleep 0.1; \
	done; echo "redis-server did not start:" >&2; tail -n 5 $(RUN_DIR)/logs/redis.log >&2; exit 1
	@$(NGINX_BIN) -p $(RUN_DIR)/ -c conf/nginx.conf \
	  || { echo "nginx did not start (see above and run/logs/error.log; make stop ends redis)" >&2; exit 1; }
	@for i in $$(seq 50); do \
	    if $(call pid_alive,$(RUN_DIR)/nginx.pid,nginx) \
	       && (exec 3<>/dev/tcp/127.0.0.1/$(PORT)) 2>/dev/null; then \
	        echo "nginx on 127.0.0.1:$(PORT) (pid $$pid, log run/logs/error.log)"; \
	        echo; echo "Open http://127.0.0.1:$(PORT)/ (the sticky-notes board; its \"Open as\" links open it as other users; make stop to end)"; exit 0; \
	    fi; sleep 0.1; \
	done; echo "nginx did not start (make stop ends redis):" >&2; tail -n 5 $(RUN_DIR)/logs/error.log >&2; exit 1

# ---------------------------------------------------------------------------------------------

# bench: the load generator (bench/collab-bench.c) and the suite against this module and nchan
# (bench/run.sh: installs libnginx-mod-nchan and gnuplot-nox when missing, writes
# docs/benchmarks.md and docs/benchmarks.png), after the Yjs workload (bench/yjs.pl, whose
# bench/yjs-notes.md the report includes), then W3 on a Redis Cluster (bench-cluster).
# BENCH_QUICK=1 for a short run (a quick run leaves docs/benchmarks.md alone).
bench: build t/yjs/node_modules
	+$(MAKE) --no-print-directory -C bench
	COLLAB_MODULE=$(MODULE) NGINX_BIN=$(NGINX_BIN) REDIS_SERVER=$(REDIS_SERVER) perl bench/yjs.pl
	COLLAB_MODULE=$(MODULE) NGINX_BIN=$(NGINX_BIN) REDIS_SERVER=$(REDIS_SERVER) bash bench/run.sh
	+$(MAKE) --no-print-directory bench-cluster

# W3 against one Redis and a Redis Cluster of 1 and 3 primaries, collab only, interleaved
# (about 27 minutes): replaces the section "W3 on a Redis Cluster" of docs/benchmarks.md; its
# own results directory, so that `bash bench/run.sh report` still rebuilds the full suite's
bench-cluster: build
	+$(MAKE) --no-print-directory -C bench
	BENCH_WORKLOADS="W3 W3c1 W3c3" BENCH_TARGETS=collab BENCH_PROFILE=0 \
	BENCH_OUT=$(CURDIR)/bench/out-cluster COLLAB_MODULE=$(MODULE) NGINX_BIN=$(NGINX_BIN) \
	REDIS_SERVER=$(REDIS_SERVER) bash bench/run.sh

# the Yjs workload alone (bench/yjs.pl: y-websocket providers relaying and joining; its
# section of docs/benchmarks.md)
bench-yjs: build t/yjs/node_modules
	COLLAB_MODULE=$(MODULE) NGINX_BIN=$(NGINX_BIN) REDIS_SERVER=$(REDIS_SERVER) perl bench/yjs.pl

# replicas near the PoP (bench/replica.pl: join, resume and delivery latency with the primary
# 40 ms away, with and without replica=; its section of docs/benchmarks.md)
bench-replica: build
	COLLAB_MODULE=$(MODULE) NGINX_BIN=$(NGINX_BIN) REDIS_SERVER=$(REDIS_SERVER) perl bench/replica.pl

ifneq ($(wildcard fuzz/Makefile.fuzz),)
include fuzz/Makefile.fuzz
fuzz: fuzz-all
else
fuzz:
	@echo "fuzz: fuzz/Makefile.fuzz is not there yet"
endif

clean: stop
	rm -rf $(BUILD_DIR) $(ASAN_DIR) $(RUN_DIR) t/tmp
