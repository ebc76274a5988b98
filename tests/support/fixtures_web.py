"""The download tests' web server: a real nginx (Debian package) serving a session directory.

``web`` is one nginx for the whole session; each test publishes its release
under its own folder of ``web.root`` and uses ``web.url + "/<folder>"`` as the
base URL. See tests/download_nginx.py for the config.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from devtools.nginx import Nginx, find_nginx


@pytest.fixture(scope="session")
def web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nginx]:
    """nginx on 127.0.0.1:<free port> with Range support, serving ``web.root``."""
    if find_nginx() is None:
        pytest.fail("nginx is not installed: run 'make install' (its scripts/install-system-deps installs "
                    "Debian's nginx package), or 'apt-get install nginx'")
    base = tmp_path_factory.mktemp("web")
    (base / "root").mkdir()
    with Nginx(base / "root", base / "nginx", slow_rate=1024 * 1024) as server:
        yield server
