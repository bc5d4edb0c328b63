-- Run once by the postgres image on an empty data volume (/docker-entrypoint-initdb.d), as POSTGRES_USER
-- (robustdx), which therefore owns the databases. deploy/compose.yaml points the Prefect server, MLflow and the
-- service's inference log (robustdx: predictions and clinician feedback, schema by Alembic migrations) here.
CREATE DATABASE prefect;
CREATE DATABASE mlflow;
CREATE DATABASE robustdx;
