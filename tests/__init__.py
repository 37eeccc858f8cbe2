"""The test suite; a package so that test modules in subfolders may share base names."""
