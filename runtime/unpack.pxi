# Index unpacking. Owner: runtime/format work.
