"""The security reviewers' page: the trail, searched and charted, in a browser."""
