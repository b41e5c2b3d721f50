"""One error type for problems the user can fix (bad options, bad files, missing data).

Scripts catch it at the top and print one line to stderr with exit code 2, no traceback.
"""
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


def exit_on_user_error(main):
    """Run main(); turn a UserError into 'error: ...' on stderr and exit code 2 (on a line of its own,
    also when a progress bar is showing)."""
    try:
        return main()
    except UserError as err:
        tqdm.write(f"error: {err}", file=sys.stderr)
        sys.exit(2)
