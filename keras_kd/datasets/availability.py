"""Making sure a TFDS dataset is prepared, failing fast when offline.

Embedded datasets (`EMBEDDED`) are generated locally and always available.
Any other TFDS dataset must already be prepared in `data_dir`, or be
downloadable: before letting TFDS download, a short connectivity probe
checks that the network is reachable, so that offline use raises a clear
`DatasetNotAvailableError` instead of hanging or failing deep inside TFDS.
"""

import threading
import urllib.error
import urllib.request

# Datasets generated locally by this package, available offline.
EMBEDDED = ("mnist1d",)

# Probed before a download: TFDS' storage host.
PROBE_URL = "https://storage.googleapis.com"
PROBE_TIMEOUT = 3.0


class DatasetNotAvailableError(RuntimeError):
    """Raised when a dataset is not prepared and cannot be downloaded."""


def network_available(url=PROBE_URL, timeout=PROBE_TIMEOUT):
    """Returns whether `url` answers an HTTP `HEAD` request in time.

    Any HTTP response, error statuses included, counts as reachable: it
    proves that name resolution, the connection (through the proxy set in
    the environment, if any) and, for HTTPS, the TLS handshake all work.
    The request runs in a daemon thread, so this returns within about
    `timeout` seconds even where name resolution hangs.

    Args:
        url: URL to send the request to.
        timeout: Seconds to wait before giving up.

    Returns:
        `True` if `url` answered within `timeout` seconds, else `False`.

    Example:

    >>> network_available("http://127.0.0.1:9", timeout=0.5)
    False
    """
    outcome = []

    def request():
        try:
            head = urllib.request.Request(url, method="HEAD")
            with urllib.request.urlopen(head, timeout=timeout):
                outcome.append(True)
        except urllib.error.HTTPError:
            outcome.append(True)
        except (OSError, ValueError):  # URLError, timeouts, bad URLs.
            outcome.append(False)

    thread = threading.Thread(target=request, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(outcome) and outcome[0]


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
            f"the network is unreachable ({PROBE_URL} did not answer "
            f"within {PROBE_TIMEOUT:g} s)"
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
