"""Infinitely wide networks as scikit-learn estimators: digits, a pipeline and a grid search."""

from sklearn.datasets import load_digits
from sklearn.model_selection import GridSearchCV, train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from torchntk import layers as L
from torchntk.sklearn import NTKClassifier

X, y = load_digits(return_X_y=True)
X_train, X_test, y_train, y_test = train_test_split(X[:600], y[:600], test_size=0.5, random_state=0)
spec = L.serial(L.Dense(512, b_std=0.1), L.Relu(), L.Dense(512, b_std=0.1), L.Relu(), L.Dense(1, b_std=0.1))
model = make_pipeline(StandardScaler(), NTKClassifier(architecture=spec, diag_reg=1e-3))
search = GridSearchCV(model, {"ntkclassifier__t": [10.0, float("inf")]}, cv=2).fit(X_train, y_train)
print("best training time t:", search.best_params_["ntkclassifier__t"])
print(f"held-out accuracy: {search.score(X_test, y_test):.3f}")
