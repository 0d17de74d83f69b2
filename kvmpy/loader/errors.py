"""LoaderError: a kernel image that cannot be loaded, with a message naming the file and the problem."""


class LoaderError(ValueError):
    pass
