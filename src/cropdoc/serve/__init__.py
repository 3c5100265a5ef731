"""``cropdoc serve``: a web service and a page that diagnose uploaded leaf photos."""
