"""The one exception type the command line turns into a one-line message and a non-zero exit."""


class DraemError(Exception):
    """A problem with the user's input, described in one line that names the file and the fault."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code
