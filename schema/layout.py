"""Byte-level constants of the .qcnn container (shared by reader and writer; numpy-free)."""

FILE_IDENTIFIER = b"QCNN"  # FlatBuffers file_identifier, bytes 4..8 of the file
ALIGNMENT = 64  # every buffer starts at a multiple of this (cache line / zmm register)
FOOTER_MAGIC = b"QEND"
FOOTER_SIZE = 16  # magic, u32 flatbuffer size, u32 CRC-32 of the flatbuffer, u32 reserved (0)
SUPPORTED_VERSIONS = (1,)


def align_up(n: int, alignment: int = ALIGNMENT) -> int:
    return (n + alignment - 1) // alignment * alignment
