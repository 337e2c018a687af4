"""The qcnn runtime: load a .qcnn file and run it (numpy is the only dependency)."""
from qcnn import QcnnFormatError
from qcnn.runtime.model import Model

__all__ = ["Model", "QcnnFormatError"]
