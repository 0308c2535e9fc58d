"""The reference of the http_cpu scenario: the smallest functions-framework target."""

import functions_framework


@functions_framework.http
def hello(request):
    return "Hello, World!"
