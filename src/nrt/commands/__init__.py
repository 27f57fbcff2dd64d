"""The command line (`nrt ...`): thin wrappers that parse options, call the library and turn its
typed errors into one-line messages and exit codes. Nothing in the library imports this package.
"""
