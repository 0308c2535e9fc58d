"""Code shared by the credit-jobs functions, the dev server, the worker and the tests."""
