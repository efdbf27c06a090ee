"""The one exception type that the CLI turns into a one-line message and a non-zero exit, and the text a failed
row keeps of any other exception (whole, or on one line)."""


class EdgecraftError(Exception):
    """A problem with the user's input or environment, stated so that the user can fix it."""


def failure_text(exc: BaseException, cap: int = 4000) -> str:
    """``'Type: message'`` with every line of the message kept (trailing whitespace stripped), at most ``cap``
    characters in all: a longer text ends with "… (N more characters)".

    Converters (OpenVINO's front end, onnx2tf, MLIR) put the failing operations and the reason on the lines after
    a generic first one ("FrontEnd API failed with OpConversionFailure:"): a row keeps them all, and the report
    shows the first lines with the whole text one click away."""
    lines = [line.rstrip() for line in str(exc).splitlines()]
    while lines and not lines[0]:
        lines.pop(0)
    message = "\n".join(lines).rstrip()
    text = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    if len(text) <= cap:
        return text
    room = cap - len(f"… ({len(text)} more characters)")  # the note is never longer than this one
    kept = text[: max(room, 0)].rstrip()
    return f"{kept}… ({len(text) - len(kept)} more characters)"


def brief(exc: BaseException, limit: int = 500) -> str:
    """'Type: message' on one line, cut at ``limit``: converters (MLIR, onnx2tf) raise pages of diagnostics. Not cut
    at a line count: OpenVINO's first three lines are where it failed, the failing op and why come after."""
    text = " ".join(line.strip() for line in str(exc).strip().splitlines() if line.strip())
    text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"
