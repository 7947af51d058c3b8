"""One exception type for bad user input: the CLI turns it into one line and exit code 2."""


class EffdnnError(Exception):
    """Bad input (recipe, data, checkpoint, option, tensor values). The message is one line for the user."""


class NotAvailableYet(EffdnnError):
    """A recipe block names a technique that this version of effdnn does not implement."""


class MissingDependency(EffdnnError):
    """The recipe's code needs an optional package that is not installed (the run is skipped)."""
