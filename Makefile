# ipoibfs: make setup | run | test | lint | bench | soak
VENV    := .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
APT_PKGS := python3-venv python3-dev libfuse3-dev fuse3 pkg-config gcc iperf3 iproute2 iputils-ping iputils-arping ethtool libcap2-bin psmisc systemd util-linux kmod busybox-static net-tools pciutils tshark tcpdump infiniband-diags opensm
MOUNTPOINT ?= /run/ipoibfs/local

.PHONY: setup run test lint bench soak clean

LAUNCHER := $(VENV)/bin/ipoibfs-frontend
FLOWS := $(VENV)/lib/ipoibfs-flows.so

# Every command and daemon is a new Python: compiled once here, they start without
# compiling ipoibfs again (PYTHONDONTWRITEBYTECODE would otherwise keep them compiling).
setup: $(STAMP) $(LAUNCHER) $(FLOWS)
	@$(PY) -m compileall -q ipoibfs >/dev/null

# The launcher `ipoibfs exec` binds over ip, ethtool, ifconfig and arping (ipoibfs/frontend.c).
$(LAUNCHER): ipoibfs/frontend.c $(STAMP)
	gcc -O2 -Wall -Wextra -Werror -o $@ ipoibfs/frontend.c

# The reader threads' C loop: the netdev's flow table (ipoibfs/netdev/flows.py).
$(FLOWS): ipoibfs/netdev/flows.c ipoibfs/netdev/gro.c ipoibfs/netdev/gro.h $(STAMP)
	gcc -O2 -Wall -Wextra -Werror -shared -fPIC -o $@ ipoibfs/netdev/flows.c ipoibfs/netdev/gro.c -lpthread

$(STAMP): pyproject.toml
	@missing=""; for p in $(APT_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing system packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	ln -sf $(CURDIR)/mount/mount.fuse.ipoibfs /sbin/mount.fuse.ipoibfs
	ln -sf $(CURDIR)/$(VENV)/bin/ipoibfs /usr/local/bin/ipoibfs
	touch $(STAMP)

run: setup
	mkdir -p $(MOUNTPOINT)
	$(VENV)/bin/ipoibfs mount --foreground $(MOUNTPOINT)

lint: setup
	$(VENV)/bin/ruff check ipoibfs tests bench
	$(VENV)/bin/ruff format --check ipoibfs tests bench
	$(VENV)/bin/mypy

test: lint
	$(VENV)/bin/pytest -q

bench: setup
	$(PY) bench/all.py

soak: setup
	$(PY) bench/soak.py

clean:
	rm -rf $(VENV) *.egg-info
