"""Publishing: what the hub hands to people and recipients.

``svg`` draws small deterministic charts (time series against limits); ``packets`` renders
the excursion decision packet (one self-contained HTML page per excursion); ``release``
writes signed, atomic releases of the published datasets.
"""
