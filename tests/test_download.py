"""Tests of the IDX download against HTTP servers on 127.0.0.1 that the tests start.

No test contacts any other address, and none uses the default mirror list.
"""

from __future__ import annotations

import functools
import http.server
import logging
import re
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from autoexp.data import sources
from autoexp.data.idx import read_idx, write_idx
from autoexp.data.sources import IDX_FILE_STEMS, download_idx_files, load_idx_dataset

TRAIN_COUNT = 50
TEST_COUNT = 20
PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


class _CountingHandler(http.server.SimpleHTTPRequestHandler):
    """Serves files from a folder and records the path of each request."""

    requested_paths: list[str]

    def do_GET(self) -> None:
        self.requested_paths.append(self.path)
        super().do_GET()

    def log_message(self, *args: object) -> None:
        pass


class _NotFoundHandler(_CountingHandler):
    def do_GET(self) -> None:
        self.requested_paths.append(self.path)
        self.send_error(404)


class _ShortBodyHandler(_CountingHandler):
    """Declares the full Content-Length but closes the connection after half of the body."""

    def do_GET(self) -> None:
        self.requested_paths.append(self.path)
        data = (Path(self.directory) / self.path.lstrip("/")).read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data[: len(data) // 2])


ServerFactory = Callable[..., tuple[str, list[str]]]


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    # A proxy from the environment would send the requests for 127.0.0.1 elsewhere.
    for variable in PROXY_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
        monkeypatch.delenv(variable.upper(), raising=False)


@pytest.fixture
def start_server() -> Iterator[ServerFactory]:
    """Yield a function that starts a server on 127.0.0.1 and returns its URL and request log.

    Every server started is shut down after the test.
    """
    servers = []

    def start(directory: Path, handler: type[_CountingHandler] = _CountingHandler):
        requested_paths: list[str] = []
        handler_class = type(handler.__name__, (handler,), {"requested_paths": requested_paths})
        server = http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), functools.partial(handler_class, directory=str(directory))
        )
        thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
        thread.start()
        servers.append((server, thread))
        return f"http://127.0.0.1:{server.server_address[1]}/", requested_paths

    yield start
    for server, thread in servers:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def served_files(tmp_path) -> dict[str, torch.Tensor]:
    """Write the four gzipped IDX files into ``tmp_path / "served"`` and return their tensors."""
    generator = torch.Generator().manual_seed(0)
    tensors = {
        "train_images": torch.randint(0, 256, (TRAIN_COUNT, 28, 28), generator=generator),
        "train_labels": torch.randint(0, 10, (TRAIN_COUNT,), generator=generator),
        "test_images": torch.randint(0, 256, (TEST_COUNT, 28, 28), generator=generator),
        "test_labels": torch.randint(0, 10, (TEST_COUNT,), generator=generator),
    }
    tensors = {key: tensor.to(torch.uint8) for key, tensor in tensors.items()}
    served = tmp_path / "served"
    served.mkdir()
    for key, stem in IDX_FILE_STEMS.items():
        write_idx(served / f"{stem}.gz", tensors[key])
    return tensors


def _unused_port() -> int:
    """Return a port on 127.0.0.1 that nothing listens on, so connecting is refused."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _raw_dir(root: Path) -> Path:
    return root / "MNIST" / "raw"


def test_download_idx_files_refused_then_served(tmp_path, served_files, start_server, caplog):
    url, requested_paths = start_server(tmp_path / "served")
    refused = f"http://127.0.0.1:{_unused_port()}/"
    root = tmp_path / "data"

    with caplog.at_level(logging.INFO, logger=sources.__name__):
        paths = download_idx_files("mnist", root, [refused, url], timeout=5)

    assert set(paths) == set(IDX_FILE_STEMS)
    for key, stem in IDX_FILE_STEMS.items():
        assert paths[key] == _raw_dir(root) / f"{stem}.gz"
        assert torch.equal(read_idx(paths[key]), served_files[key])
    assert sorted(requested_paths) == sorted(f"/{stem}.gz" for stem in IDX_FILE_STEMS.values())
    assert sorted(path.name for path in _raw_dir(root).iterdir()) == sorted(
        f"{stem}.gz" for stem in IDX_FILE_STEMS.values()
    )
    downloaded_lines = [r for r in caplog.records if r.getMessage().startswith("Downloaded")]
    assert len(downloaded_lines) == 4
    refused_lines = [r for r in caplog.records if "connection refused" in r.getMessage()]
    assert len(refused_lines) == 4


def test_download_idx_files_mirror_without_slash(tmp_path, served_files, start_server):
    url, _ = start_server(tmp_path / "served")

    paths = download_idx_files("fashion_mnist", tmp_path / "data", [url.rstrip("/")], timeout=5)

    assert paths["test_labels"] == tmp_path / "data/FashionMNIST/raw/t10k-labels-idx1-ubyte.gz"
    assert torch.equal(read_idx(paths["test_labels"]), served_files["test_labels"])


def test_download_idx_files_all_mirrors_fail(tmp_path, start_server):
    not_found_url, _ = start_server(tmp_path, _NotFoundHandler)
    refused = f"http://127.0.0.1:{_unused_port()}/"
    root = tmp_path / "data"

    with pytest.raises(
        RuntimeError, match="Download of train-images-idx3-ubyte.gz for MNIST failed"
    ) as error:
        download_idx_files("mnist", root, [refused, not_found_url], timeout=5)

    message = str(error.value)
    assert f"  {refused}train-images-idx3-ubyte.gz: connection refused\n" in message
    assert f"  {not_found_url}train-images-idx3-ubyte.gz: HTTP 404 Not Found\n" in message
    assert f"put {', '.join(IDX_FILE_STEMS.values())}" in message
    assert f"into {_raw_dir(root)}" in message
    assert "data.root=/path/to/folder" in message
    assert list(_raw_dir(root).iterdir()) == []


def test_download_idx_files_corrupt_file(tmp_path, served_files, start_server):
    served_labels = tmp_path / "served" / "train-labels-idx1-ubyte.gz"
    data = served_labels.read_bytes()
    served_labels.write_bytes(data[: len(data) // 2])
    url, _ = start_server(tmp_path / "served")
    root = tmp_path / "data"

    expected = f"  {url}train-labels-idx1-ubyte.gz: invalid file: invalid gzip data (EOFError: "
    with pytest.raises(RuntimeError, match=re.escape(expected)):
        download_idx_files("mnist", root, [url], timeout=5)

    # The images file came first and is complete, and nothing else is left behind.
    assert [path.name for path in _raw_dir(root).iterdir()] == ["train-images-idx3-ubyte.gz"]


def test_download_idx_files_wrong_ndim(tmp_path, served_files, start_server):
    served = tmp_path / "served"
    write_idx(served / "train-images-idx3-ubyte.gz", served_files["train_labels"])
    url, _ = start_server(served)

    expected = "invalid file: expected 3 dimensions for train_images, found shape (50,)"
    with pytest.raises(RuntimeError, match=re.escape(expected)):
        download_idx_files("mnist", tmp_path / "data", [url], timeout=5)

    assert list(_raw_dir(tmp_path / "data").iterdir()) == []


def test_download_idx_files_short_body(tmp_path, served_files, start_server):
    url, _ = start_server(tmp_path / "served", _ShortBodyHandler)
    size = (tmp_path / "served" / "train-images-idx3-ubyte.gz").stat().st_size

    expected = f"incomplete download: received {size // 2} of {size} bytes"
    with pytest.raises(RuntimeError, match=re.escape(expected)):
        download_idx_files("mnist", tmp_path / "data", [url], timeout=5)

    assert list(_raw_dir(tmp_path / "data").iterdir()) == []


def test_download_idx_files_timeout(tmp_path):
    # A listening socket that never accepts: the connection succeeds, the response never comes.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/"

        with pytest.raises(RuntimeError, match=re.escape("ubyte.gz: timed out after 0.2 s")):
            download_idx_files("mnist", tmp_path / "data", [url], timeout=0.2)

    assert list(_raw_dir(tmp_path / "data").iterdir()) == []


def test_download_idx_files_interrupt_leaves_no_file(tmp_path, monkeypatch):
    def interrupted_fetch(url, destination, timeout):
        destination.write(b"\x1f\x8b partial data")
        raise KeyboardInterrupt

    monkeypatch.setattr(sources, "_fetch", interrupted_fetch)

    with pytest.raises(KeyboardInterrupt):
        download_idx_files("mnist", tmp_path / "data", ["http://127.0.0.1:9/"], timeout=5)

    assert list(_raw_dir(tmp_path / "data").iterdir()) == []


def test_download_idx_files_skips_present_files(tmp_path, served_files, start_server):
    url, requested_paths = start_server(tmp_path / "served")
    root = tmp_path / "data"
    first = download_idx_files("mnist", root, [url], timeout=5)
    assert len(requested_paths) == 4

    second = download_idx_files("mnist", root, [url], timeout=5)

    assert second == first
    assert len(requested_paths) == 4


def test_download_idx_files_skips_present_raw_file(tmp_path, served_files, start_server):
    url, requested_paths = start_server(tmp_path / "served")
    raw_dir = _raw_dir(tmp_path / "data")
    raw_dir.mkdir(parents=True)
    write_idx(raw_dir / "t10k-labels-idx1-ubyte", served_files["test_labels"])

    paths = download_idx_files("mnist", tmp_path / "data", [url], timeout=5)

    assert paths["test_labels"] == raw_dir / "t10k-labels-idx1-ubyte"
    assert "/t10k-labels-idx1-ubyte.gz" not in requested_paths
    assert len(requested_paths) == 3


def test_download_idx_files_replaces_invalid_file(tmp_path, served_files, start_server):
    url, requested_paths = start_server(tmp_path / "served")
    raw_dir = _raw_dir(tmp_path / "data")
    raw_dir.mkdir(parents=True)
    (raw_dir / "train-labels-idx1-ubyte.gz").write_bytes(b"not gzip data")

    paths = download_idx_files("mnist", tmp_path / "data", [url], timeout=5)

    assert torch.equal(read_idx(paths["train_labels"]), served_files["train_labels"])
    assert len(requested_paths) == 4


def test_download_idx_files_empty_mirrors(tmp_path):
    with pytest.raises(ValueError, match="no mirrors given to download mnist"):
        download_idx_files("mnist", tmp_path, [])


def test_load_idx_dataset_downloads_missing_files(tmp_path, served_files, start_server):
    url, requested_paths = start_server(tmp_path / "served")
    root = tmp_path / "data"

    data = load_idx_dataset("mnist", root=root, download=True, mirrors=[url])

    for key, tensor in served_files.items():
        assert torch.equal(data[key], tensor)
    assert len(requested_paths) == 4

    # The second load finds the downloaded files and sends no request.
    load_idx_dataset("mnist", root=root, download=True, mirrors=[url])
    assert len(requested_paths) == 4
