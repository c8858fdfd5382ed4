"""Worker apps served by real ``ow-es worker`` processes in the multi-process tests."""
