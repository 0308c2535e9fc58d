"""The reference of the http_cpu scenario: the smallest functions-framework target."""

import time

import functions_framework


@functions_framework.http
def hello(request):
    return "Hello, World!"


@functions_framework.http
def hello_wait(request):
    # the http_cpu scenario's calibration: one idle wait as long as generate's database call
    time.sleep(request.environ["bench.wait_seconds"])
    return "Hello, World!"
