"""Making sure a TFDS dataset is prepared, failing fast when offline.

Embedded datasets (`EMBEDDED`) are generated locally and always available.
Any other TFDS dataset must already be prepared in `data_dir`, or be
downloadable: before letting TFDS download, a short connectivity probe
checks that the network is reachable, so that offline use raises a clear
`DatasetNotAvailableError` instead of hanging or failing deep inside TFDS.
"""

import socket
import threading

# Datasets generated locally by this package, available offline.
EMBEDDED = ("mnist1d",)

# Host probed before a download: TFDS' storage host.
PROBE_HOST = "storage.googleapis.com"
PROBE_PORT = 443
PROBE_TIMEOUT = 3.0


class DatasetNotAvailableError(RuntimeError):
    """Raised when a dataset is not prepared and cannot be downloaded."""


def network_available(host=PROBE_HOST, port=PROBE_PORT, timeout=PROBE_TIMEOUT):
    """Returns whether a TCP connection to `host:port` can be opened.

    The connection (name resolution included) runs in a daemon thread, so
    this returns within about `timeout` seconds even where DNS hangs.

    Args:
        host: Host name or address to connect to.
        port: TCP port to connect to.
        timeout: Seconds to wait before giving up.

    Returns:
        `True` if the connection was opened, `False` otherwise.

    Example:

    >>> network_available("127.0.0.1", port=9, timeout=0.5)
    False
    """
    connected = threading.Event()

    def connect():
        try:
            with socket.create_connection((host, port), timeout=timeout):
                connected.set()
        except OSError:
            pass

    threading.Thread(target=connect, daemon=True).start()
    return connected.wait(timeout)


def ensure_prepared(builder, *, download=True):
    """Prepares `builder`'s data in its data directory if not yet done.

    Embedded datasets are generated locally. Other datasets are downloaded
    and prepared by TFDS, as `tfds.load` does, but only after the network
    was found reachable by `network_available`.

    Args:
        builder: A `tfds.core.DatasetBuilder`.
        download: Whether a dataset that is not embedded may be downloaded.

    Raises:
        DatasetNotAvailableError: If the dataset is not prepared and can't
            be downloaded: `download=False`, or the network is unreachable.

    Example:

    >>> builder = tfds.builder("mnist1d", data_dir="/tmp/tfds")
    >>> ensure_prepared(builder)
    """
    if builder.is_prepared():
        return
    if builder.name in EMBEDDED:
        builder.download_and_prepare()
        return
    if not download:
        reason = "downloads are disabled (`download=False`)"
    elif not network_available():
        reason = (
            f"the network is unreachable (could not connect to "
            f"{PROBE_HOST}:{PROBE_PORT} within {PROBE_TIMEOUT:g} s)"
        )
    else:
        builder.download_and_prepare()
        return
    raise DatasetNotAvailableError(
        f"Dataset '{builder.name}' is not prepared and {reason}. Expected "
        "it prepared in `data_dir`: run once with network access to "
        "download it there, or pass the `data_dir` where it is already "
        f"prepared. Datasets available offline: {EMBEDDED}. Received: "
        f"name='{builder.name}', data_dir='{builder.data_dir_root}'"
    )
