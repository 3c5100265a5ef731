"""The dataset doctor (``cropdoc doctor``): exact and near duplicates, leaks between splits,
likely label errors from out-of-fold predictions (cleanlab), out-of-scope and unreadable
photos; a report, a review page and a cleaned manifest, never a change to the user's files.

``duplicates`` (hashes and groups), ``labels`` (K-fold training and confident learning),
``findings`` (what is found, as data and files), ``decisions`` (the manifest they make),
``review`` (the page), ``doctor`` (the whole check: ``cropdoc.doctor``).
"""
