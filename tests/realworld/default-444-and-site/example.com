server {
	listen 80;
	listen [::]:80;

	server_name site.example.com;

	root /var/www/example.com;
	index index.html;

	location / {
		try_files $uri $uri/ =404;
	}
}
