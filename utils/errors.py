"""One error type for problems the user can fix (bad options, bad files, missing data), which scripts
report as one line on stderr with exit code 2, no traceback (exit_on_user_error)."""
import re
import sys
from pathlib import Path

from tqdm import tqdm


class UserError(Exception):
    """A problem with the user's input or environment, reported as one line."""


def ensure_writable(*folders):
    """Create each folder if needed and check that a file can be written there, else a UserError."""
    for folder in folders:
        try:
            Path(folder).mkdir(parents=True, exist_ok=True)
            probe = Path(folder) / ".write_test"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as err:
            raise UserError(f"cannot write to {folder}: {err.strerror}") from None


def out_of_memory(err):
    """The one line for an allocation that failed (CUDA's OutOfMemoryError, or the CPU allocator's
    RuntimeError), or None for any other error."""
    text = str(err)
    if not (type(err).__name__ == "OutOfMemoryError" or "can't allocate memory" in text):
        return None
    asked = re.search(r"allocate (\d+(?:\.\d+)?) ?(bytes|[KMGT]iB)", text)
    size = f" ({asked[1]} {asked[2]} in one allocation)" if asked else ""
    return f"out of memory{size}; try a smaller --batch_size (or --num_samples)"


def exit_on_user_error(main):
    """Run main(); turn a UserError, or running out of memory, into 'error: ...' on stderr and exit
    code 2 (on a line of its own, also when a progress bar is showing)."""
    try:
        return main()
    except (UserError, RuntimeError) as err:  # torch.OutOfMemoryError is a RuntimeError
        message = str(err) if isinstance(err, UserError) else out_of_memory(err)
        if message is None:
            raise
        tqdm.write(f"error: {message}", file=sys.stderr)
        sys.exit(2)
