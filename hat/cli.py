"""Entry wrapper for the stage scripts: a user error is one line on stderr and exit code 2.

Besides :class:`hat.errors.HatError`, an error of the machine rather than of the code (a full disk, a read-only or
missing directory, no permission: an ``OSError`` with an errno) is one line too, naming the file; every file users
keep is written through :mod:`hat.io` (a temporary file moved into place), so such a failure leaves the old file.
"""
import errno
import sys

# OSErrors that the environment causes, not a bug: reported in one line, exit 2
ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOENT,
                      errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.EFBIG, errno.EMFILE, errno.ENFILE,
                      errno.ENAMETOOLONG, errno.EIO, errno.ENOTEMPTY, errno.EXDEV}


def os_error_line(e: OSError) -> str:
    """``No space left on device: /path`` (strerror, then the file or files involved)."""
    what = e.strerror or str(e)
    files = [str(f) for f in (e.filename, getattr(e, "filename2", None)) if f]
    line = f"{what}: {' -> '.join(files)}" if files else what
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        line += " (free some space and run the command again)"
    return line


def run(main):
    from hat.errors import HatError

    try:
        code = main()
    except HatError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except OSError as e:
        if e.errno not in ENVIRONMENT_ERRNOS:
            raise
        print(f"error: {os_error_line(e)}", file=sys.stderr)
        sys.exit(2)
    sys.exit(code or 0)
