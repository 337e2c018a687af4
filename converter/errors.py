"""The one exception type of the converter.

Everything the user can get wrong (files, options, unsupported graphs, calibration data) raises
ConversionError with a message that names the problem; the CLI prints it as a single
`qcnn-convert: error: ...` line and exits with status 2.
"""


class ConversionError(ValueError):
    """A conversion cannot proceed; the message says why (file, node, option...)."""
