"""The embedded market and exchange: the simulated market, its clock, the book, and the server that
speaks brokers' protocols over it (``steadyhand exchange serve``)."""
