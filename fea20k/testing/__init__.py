"""Test helpers shipped with the package (fakes for expensive back ends); imported only by tests and benches."""
