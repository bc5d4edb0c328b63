-- Run once by the postgres image on an empty data volume (/docker-entrypoint-initdb.d), as POSTGRES_USER
-- (robustdx), which therefore owns both databases. deploy/compose.yaml points the Prefect server and MLflow here.
CREATE DATABASE prefect;
CREATE DATABASE mlflow;
