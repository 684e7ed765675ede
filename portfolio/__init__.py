"""The portfolio's logic: the strategies' sub-books (books.py), behind actors/portfolio.py."""
