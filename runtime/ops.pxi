# Dense and elementwise op wrappers. Owner: ops work.
