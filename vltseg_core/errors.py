"""The one exception type for bad user input: the CLI and the node print its message as one line."""


class VLTSegError(Exception):
    """A problem with the user's input (file, parameter, topic, preset...). The message says what was wrong,
    where (file/topic/parameter) and what was expected; it is printed without a traceback."""
